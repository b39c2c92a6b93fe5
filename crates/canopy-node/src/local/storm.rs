//! Many nodes started at once: a join storm.

use canopy_net::CertRole;
use canopy_tree::KeyTag;

use super::LocalCluster;

impl LocalCluster {
    /// Starts `routers` routers and one client per entry of `clients` (its subscriptions) as
    /// one storm: every endpoint is bound and its certificate issued first (reported through
    /// `progress(bound, total)`), then every node is started in one burst. Returns when the
    /// burst began, so the caller times the joins and not the certificate issuing.
    pub fn add_nodes_at_once(
        &mut self,
        routers: usize,
        clients: Vec<Vec<KeyTag>>,
        mut progress: impl FnMut(usize, usize),
    ) -> anyhow::Result<tokio::time::Instant> {
        let total = routers + clients.len();
        let mut bound = Vec::with_capacity(total);
        for _ in 0..routers {
            let id = self.next_router;
            self.next_router += 1;
            bound.push((self.bind(id, CertRole::Router)?, Vec::new()));
            progress(bound.len(), total);
        }
        for subscriptions in clients {
            let id = self.next_client;
            self.next_client += 1;
            bound.push((self.bind(id, CertRole::Client)?, subscriptions));
            progress(bound.len(), total);
        }
        let began = tokio::time::Instant::now();
        for ((endpoint, events), subscriptions) in bound {
            let roots = self.roots.clone();
            self.spawn(endpoint, events, subscriptions, roots)?;
        }
        Ok(began)
    }
}
