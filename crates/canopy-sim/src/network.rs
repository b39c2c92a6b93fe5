//! The experiments' network: a root, routers joining over the first second (so clients land
//! under them rather than the root), then clients joining over a second or more, run until
//! settled and checked.

use std::time::Duration;

use canopy_tree::{NodeId, Role, Time, TreeConfig, TreeShape};
use rand::rngs::SmallRng;
use rand::Rng;

use crate::congestion::{run_in_steps, Progress};
use crate::{LatencyModel, Sim};

/// What was built: the simulator, each client with its join time (in creation order), and
/// the settled tree's shape.
pub struct Network {
    pub sim: Sim,
    pub clients: Vec<(Time, NodeId)>,
    pub shape: TreeShape,
}

/// Builds and settles the network. `on_client` runs right after each client is added
/// (before it starts), with the same random source.
pub fn build(
    config: TreeConfig,
    seed: u64,
    (routers, clients): (usize, usize),
    rng: &mut SmallRng,
    on_client: &mut dyn FnMut(&mut Sim, NodeId, &mut SmallRng),
    progress: &mut dyn FnMut(Progress),
) -> Result<Network, String> {
    config.validate().map_err(|e| e.to_string())?;
    let settle = config.heartbeat_interval * 4;
    let mut sim = Sim::new(config, LatencyModel::default(), seed);
    let ms = Duration::from_millis;
    sim.add_node(Role::Root, "", Time::ZERO);
    for _ in 0..routers {
        let at = ms(10) + ms(1000).mul_f64(rng.random::<f64>());
        sim.add_node(Role::Router, "", at);
    }
    let clients_start = ms(1500);
    let join_span = ms(1000).max(ms((clients / 500) as u64));
    let mut joined = Vec::with_capacity(clients);
    for _ in 0..clients {
        let at = clients_start + join_span.mul_f64(rng.random::<f64>());
        let id = sim.add_node(Role::Client, "", at);
        on_client(&mut sim, id, rng);
        joined.push((at, id));
    }
    run_in_steps(
        &mut sim,
        clients_start + join_span + settle,
        "building",
        progress,
    );
    let shape = crate::check::check_tree(&sim)?;
    Ok(Network {
        sim,
        clients: joined,
        shape,
    })
}
