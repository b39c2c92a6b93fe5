//! Beside the seed's Table 1 (Bloom filter size at 0.1 % false positives for 10³–10⁶ keys):
//! what one child link costs its parent in Canopy as built (the exact set of the table slots
//! the child holds), when the link holds all, an eighth or a sixty-fourth of what its
//! parent's subtree wants, with the false positives each shows; and a quotient filter alone,
//! sized for the keys.

use std::fmt::Write as _;
use std::path::Path;

use canopy_tree::{link_set_bytes, FilterKey, KeyTag};
use serde::Serialize;

use super::plot::{LineChart, Panel as _, Series};
use super::{Figure, FigureOptions};

const FP_RATE: f64 = 0.001;
/// Tags probed for false positives of the quotient filter alone.
const PROBES: u64 = 200_000;
/// The link's share of its parent's subtree interest: all of it, an eighth, a 64th.
const SHARES: [u32; 3] = [1, 8, 64];

#[derive(Debug, Clone, Serialize)]
pub struct FilterRow {
    pub keys: u64,
    /// The seed's Table 1, in bytes.
    pub paper_bloom_bytes: u64,
    /// A Bloom filter of optimal size for the keys at 0.1 %: n·ln(1/p)/ln²2 bits.
    pub optimal_bloom_bytes: u64,
    /// Canopy as built, one link, by share (1, 1/8, 1/64 of the parent's union).
    pub link_bytes: Vec<u64>,
    /// Slots of the parent's union the link's set claims without holding them, by share.
    pub link_false_positives: Vec<u64>,
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

fn measure(keys: u64, paper_bloom_bytes: u64, shares: &[u32]) -> Result<FilterRow, String> {
    let held = u32::try_from(keys).map_err(|_| format!("{keys} keys"))?;
    let filter_key = FilterKey::from_seed(keys);
    let (mut link_bytes, mut link_false_positives) = (Vec::new(), Vec::new());
    for &share in shares {
        let (bytes, wrong) = link_set_bytes(held, held * share, filter_key);
        link_bytes.push(bytes as u64);
        link_false_positives.push(wrong);
    }
    let mut alone = qfilter::Filter::new(keys, FP_RATE).map_err(|e| format!("{e:?}"))?;
    for t in (0..keys).map(tag) {
        alone
            .insert_duplicated(t)
            .map_err(|e| format!("qfilter for {keys} keys: {e:?}"))?;
    }
    // Tags never inserted: node tags of ids past the inserted range.
    let alone_fp = (keys..keys + PROBES)
        .map(tag)
        .filter(|&t| alone.contains(t))
        .count();
    let optimal_bits = keys as f64 * (1.0 / FP_RATE).ln() / std::f64::consts::LN_2.powi(2);
    Ok(FilterRow {
        keys,
        paper_bloom_bytes,
        optimal_bloom_bytes: (optimal_bits / 8.0).ceil() as u64,
        link_bytes,
        link_false_positives,
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
    let (count, shares) = if options.quick {
        (2, &SHARES[..2])
    } else {
        (table1.len(), &SHARES[..])
    };
    let rows = table1[..count]
        .iter()
        .map(|&(keys, bytes)| measure(keys, bytes, shares))
        .collect::<Result<Vec<_>, _>>()?;
    let line = |label: String, f: &dyn Fn(&FilterRow) -> u64| Series {
        label,
        points: rows
            .iter()
            .map(|r| (r.keys as f64, r.bits_per_key(f(r))))
            .collect(),
    };
    let mut series = vec![
        line("seed's Table 1 (Bloom)".into(), &|r| r.paper_bloom_bytes),
        line("optimal Bloom".into(), &|r| r.optimal_bloom_bytes),
    ];
    for (i, share) in shares.iter().enumerate() {
        series.push(line(
            format!("canopy link holding 1/{share} of its parent's tags"),
            &move |r: &FilterRow| r.link_bytes[i],
        ));
    }
    series.push(line("qfilter alone, sized for the keys".into(), &|r| {
        r.qfilter_bytes
    }));
    LineChart {
        title: "Bits per key of one link's interest at 0.1 % false positives or fewer",
        x_label: "keys the link holds",
        y_label: "bits per key",
        log_x: true,
        log_y: false,
        series,
    }
    .write(svg)?;
    let kib = |b: u64| format!("{:.1} KiB", b as f64 / 1024.0);
    let mut md = String::from("| keys | seed's Bloom (Table 1) | optimal Bloom |");
    for share in shares {
        let _ = write!(md, " canopy link, 1/{share} of the parent's tags |");
    }
    md.push_str(
        " link false positives | qfilter sized for n | its measured FP |\n|---:|---:|---:|",
    );
    md.push_str(&"---:|".repeat(shares.len() + 3));
    md.push('\n');
    for r in &rows {
        let _ = write!(
            md,
            "| {} | {} ({:.1} b/key) | {} ({:.1}) |",
            r.keys,
            kib(r.paper_bloom_bytes),
            r.bits_per_key(r.paper_bloom_bytes),
            kib(r.optimal_bloom_bytes),
            r.bits_per_key(r.optimal_bloom_bytes),
        );
        for &bytes in &r.link_bytes {
            let _ = write!(md, " {} ({:.1}) |", kib(bytes), r.bits_per_key(bytes));
        }
        let _ = writeln!(
            md,
            " {} | {} ({:.1}) | {:.3} % |",
            r.link_false_positives.iter().sum::<u64>(),
            kib(r.qfilter_bytes),
            r.bits_per_key(r.qfilter_bytes),
            r.qfilter_fp_rate * 100.0,
        );
    }
    let _ = writeln!(
        md,
        "\nIn brackets: bits per key. A link's set is exact: its false positives are counted over \
         every slot of the parent's union it does not hold. The quotient filter alone targets \
         0.1 % and is measured over {PROBES} tags never inserted."
    );
    // The goal: a link holding its parent's whole interest (the seed's setting: one filter
    // for n keys) costs no more than Table 1, with no false positive anywhere.
    let held = rows.iter().all(|r| {
        r.link_bytes[0] <= r.paper_bloom_bytes
            && r.link_false_positives.iter().all(|&wrong| wrong == 0)
            && r.qfilter_fp_rate <= FP_RATE * 3.0
    });
    Figure::new(&rows, md, held)
}
