//! Beside the seed's Table 1 (Bloom filter size at 0.1 % false positives for 10³–10⁶ keys):
//! what one child link costs its parent in Canopy as built (the exact tag set plus the
//! resizeable quotient filter), and a quotient filter alone, sized for the keys, with the
//! false-positive rate each actually shows.

use std::fmt::Write as _;
use std::path::Path;

use canopy_tree::{link_memory, FilterKey, InterestFilter, KeyTag};
use serde::Serialize;

use super::plot::{LineChart, Panel as _, Series};
use super::{Figure, FigureOptions};

const FP_RATE: f64 = 0.001;
/// Tags probed for false positives per filter.
const PROBES: u64 = 200_000;

#[derive(Debug, Clone, Serialize)]
pub struct FilterRow {
    pub keys: u64,
    /// The seed's Table 1, in bytes.
    pub paper_bloom_bytes: u64,
    /// A Bloom filter of optimal size for the keys at 0.1 %: n·ln(1/p)/ln²2 bits.
    pub optimal_bloom_bytes: u64,
    /// Canopy as built: the exact set and the filter of one link.
    pub link_exact_set_bytes: u64,
    pub link_filter_bytes: u64,
    pub link_filter_fp_rate: f64,
    /// A quotient filter alone, created for exactly this many keys.
    pub qfilter_bytes: u64,
    pub qfilter_fp_rate: f64,
}

impl FilterRow {
    fn bits_per_key(&self, bytes: u64) -> f64 {
        bytes as f64 * 8.0 / self.keys as f64
    }
}

fn tag(i: u64) -> KeyTag {
    canopy_tree::node_tag(i)
}

fn measure(keys: u64, paper_bloom_bytes: u64) -> Result<FilterRow, String> {
    let tags: Vec<KeyTag> = (0..keys).map(tag).collect();
    let filter_key = FilterKey::from_seed(keys);
    let link = link_memory(&tags, FP_RATE, filter_key);
    let mut built = InterestFilter::new(FP_RATE, filter_key);
    let mut alone = qfilter::Filter::new(keys, FP_RATE).map_err(|e| format!("{e:?}"))?;
    for &t in &tags {
        built.insert(t);
        alone
            .insert_duplicated(t)
            .map_err(|e| format!("qfilter for {keys} keys: {e:?}"))?;
    }
    // Tags never inserted: node tags of ids past the inserted range.
    let probes = (keys..keys + PROBES).map(tag);
    let (mut built_fp, mut alone_fp) = (0u64, 0u64);
    for t in probes {
        built_fp += u64::from(built.may_contain(t));
        alone_fp += u64::from(alone.contains(t));
    }
    let optimal_bits = keys as f64 * (1.0 / FP_RATE).ln() / std::f64::consts::LN_2.powi(2);
    Ok(FilterRow {
        keys,
        paper_bloom_bytes,
        optimal_bloom_bytes: (optimal_bits / 8.0).ceil() as u64,
        link_exact_set_bytes: link.exact_set_bytes as u64,
        link_filter_bytes: link.filter_bytes as u64,
        link_filter_fp_rate: built_fp as f64 / PROBES as f64,
        qfilter_bytes: alone.memory_usage() as u64,
        qfilter_fp_rate: alone_fp as f64 / PROBES as f64,
    })
}

pub fn figure(options: &FigureOptions, svg: &Path) -> Result<Figure, String> {
    let table1: &[(u64, u64)] = &[
        (1_000, 2 << 10),
        (10_000, 18 << 10),
        (100_000, 175 << 10),
        (1_000_000, 2 << 20),
    ];
    let count = if options.quick { 2 } else { table1.len() };
    let rows = table1[..count]
        .iter()
        .map(|&(keys, bytes)| measure(keys, bytes))
        .collect::<Result<Vec<_>, _>>()?;
    let line = |label: &str, f: fn(&FilterRow) -> u64| Series {
        label: label.into(),
        points: rows
            .iter()
            .map(|r| (r.keys as f64, r.bits_per_key(f(r))))
            .collect(),
    };
    LineChart {
        title: "Bits per key of one link's filter at 0.1 % false positives",
        x_label: "keys in the filter",
        y_label: "bits per key",
        log_x: true,
        log_y: false,
        series: vec![
            line("seed's Table 1 (Bloom)", |r| r.paper_bloom_bytes),
            line("optimal Bloom", |r| r.optimal_bloom_bytes),
            line("canopy link as built: exact set + filter", |r| {
                r.link_exact_set_bytes + r.link_filter_bytes
            }),
            line("canopy link: its quotient filter only", |r| {
                r.link_filter_bytes
            }),
            line("qfilter sized for the keys", |r| r.qfilter_bytes),
        ],
    }
    .write(svg)?;
    let kib = |b: u64| format!("{:.1} KiB", b as f64 / 1024.0);
    let mut md = String::from(
        "| keys | seed's Bloom (Table 1) | optimal Bloom | canopy link as built (set + filter) | of which filter | filter's measured FP | qfilter sized for n | its measured FP |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &rows {
        let whole = r.link_exact_set_bytes + r.link_filter_bytes;
        let _ = writeln!(
            md,
            "| {} | {} ({:.1} b/key) | {} ({:.1}) | {} ({:.1}) | {} ({:.1}) | {:.3} % | {} ({:.1}) | {:.3} % |",
            r.keys,
            kib(r.paper_bloom_bytes),
            r.bits_per_key(r.paper_bloom_bytes),
            kib(r.optimal_bloom_bytes),
            r.bits_per_key(r.optimal_bloom_bytes),
            kib(whole),
            r.bits_per_key(whole),
            kib(r.link_filter_bytes),
            r.bits_per_key(r.link_filter_bytes),
            r.link_filter_fp_rate * 100.0,
            kib(r.qfilter_bytes),
            r.bits_per_key(r.qfilter_bytes),
            r.qfilter_fp_rate * 100.0,
        );
    }
    let _ = writeln!(
        md,
        "\nTarget false-positive rate 0.1 %; measured over {PROBES} tags never inserted. In brackets: bits per key."
    );
    let held = rows
        .iter()
        .all(|r| r.link_filter_fp_rate <= FP_RATE * 3.0 && r.qfilter_fp_rate <= FP_RATE * 3.0);
    Figure::new(&rows, md, held)
}
