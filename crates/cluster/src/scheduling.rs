//! The scheduler's job, reduced to what a one-machine cluster needs: a pod without `nodeName`
//! goes to the Ready node, among those its `nodeSelector` allows, that runs the fewest pods (ties
//! by name), which spreads a Deployment's replicas over the nodes. Affinity, taints and resource
//! requests are not considered; docs/local-cluster.md says so.

use std::collections::BTreeMap;

/// A node as scheduling sees it.
#[derive(Clone, Debug)]
pub struct NodeLoad<'a> {
    /// Node name.
    pub name: &'a str,
    /// Node labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Pods bound to it and not ended.
    pub pods: usize,
}

/// The node for a pod with `node_selector`, or `None` when no node fits.
pub fn pick_node<'a>(nodes: &[NodeLoad<'a>], node_selector: Option<&BTreeMap<String, String>>) -> Option<&'a str> {
    nodes
        .iter()
        .filter(|n| node_selector.is_none_or(|s| s.iter().all(|(k, v)| n.labels.get(k) == Some(v))))
        .min_by(|a, b| a.pods.cmp(&b.pods).then(a.name.cmp(b.name)))
        .map(|n| n.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_loaded_fitting_node_wins_ties_by_name() {
        let one = BTreeMap::from([("kubernetes.io/hostname".to_owned(), "node-1".to_owned())]);
        let two = BTreeMap::from([("kubernetes.io/hostname".to_owned(), "node-2".to_owned())]);
        let nodes =
            [NodeLoad { name: "node-1", labels: &one, pods: 2 }, NodeLoad { name: "node-2", labels: &two, pods: 1 }];
        assert_eq!(pick_node(&nodes, None), Some("node-2"));
        let even = [NodeLoad { pods: 2, ..nodes[1].clone() }, nodes[0].clone()];
        assert_eq!(pick_node(&even, None), Some("node-1"));
        assert_eq!(pick_node(&nodes, Some(&one)), Some("node-1"), "nodeSelector narrows the choice");
        let nowhere = BTreeMap::from([("disk".to_owned(), "ssd".to_owned())]);
        assert_eq!(pick_node(&nodes, Some(&nowhere)), None);
    }
}
