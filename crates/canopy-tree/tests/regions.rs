//! Regions in the tree: a region's routers form a subtree of their own, and its clients stay
//! in it while it has room.

mod common;

use canopy_tree::Role;
use common::*;

#[test]
fn routers_join_below_their_own_region_and_clients_follow() {
    let mut config = config();
    config.max_child_routers = 2;
    config.max_clients = 2;
    let mut net = Net::new(config, 1);
    // The root's two router slots go to the first router of each region...
    net.join_in(10, Role::Router, "us");
    net.join_in(20, Role::Router, "ap");
    // ...and later routers of a region go below it, even while other slots are shallower.
    net.join_in(11, Role::Router, "us");
    net.join_in(21, Role::Router, "ap");
    net.join_in(12, Role::Router, "us");
    assert_eq!(net.parent(10), Some(ROOT));
    assert_eq!(net.parent(20), Some(ROOT));
    assert_eq!(net.parent(11), Some(10));
    assert_eq!(net.parent(21), Some(20));
    assert_eq!(net.parent(12), Some(10));
    // A region without routers of its own takes the shallowest slot anywhere (router 10
    // is full).
    net.join_in(30, Role::Router, "sa");
    assert_eq!(net.parent(30), Some(20));
    // Clients attach to their own region's routers while those have room.
    for (client, region) in [(100, "ap"), (101, "ap"), (102, "ap"), (103, "ap")] {
        net.join_in(client, Role::Client, region);
        let parent = net.parent(client).expect("attached");
        assert!([20, 21].contains(&parent), "client {client} under {parent}");
    }
}
