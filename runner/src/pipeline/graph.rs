//! The stages as a graph: their order (the file's, where the needs allow), cycles, and the
//! artifact kinds each stage needs from the stages it names.
use std::collections::BTreeMap;

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};

use super::stages::RawStage;
use crate::diag::{Diagnostic, Findings};
use crate::plugins::Registry;

pub(super) fn topological_order(raw: &[RawStage], found: &mut Findings) -> Option<Vec<usize>> {
    let mut graph: DiGraph<usize, ()> = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..raw.len()).map(|i| graph.add_node(i)).collect();
    for (i, stage) in raw.iter().enumerate() {
        for (need, _) in &stage.needs {
            if let Some(j) = raw.iter().position(|s| &s.id == need) {
                if i != j {
                    graph.add_edge(nodes[j], nodes[i], ());
                }
            }
        }
    }
    match toposort(&graph, None) {
        Ok(_) => Some(file_order_first(&graph, &nodes)),
        Err(_) => {
            for scc in tarjan_scc(&graph).into_iter().filter(|c| c.len() > 1) {
                let mut members: Vec<usize> = scc.iter().map(|n| graph[*n]).collect();
                members.sort();
                let cycle = walk_cycle(&graph, &nodes, members[0], &members);
                let names: Vec<&str> = cycle.iter().map(|i| raw[*i].id.as_str()).collect();
                found.error(
                    raw[members[0]].pos,
                    format!("cycle in `needs`: {} → {}", names.join(" → "), names[0]),
                );
            }
            None
        }
    }
}

/// A dependency order of an acyclic graph that keeps the file's order wherever the needs
/// allow (Kahn's algorithm taking the earliest ready stage), so stages start as written.
pub(super) fn file_order_first(graph: &DiGraph<usize, ()>, nodes: &[NodeIndex]) -> Vec<usize> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut waiting: Vec<usize> =
        nodes.iter().map(|&n| graph.neighbors_directed(n, petgraph::Direction::Incoming).count()).collect();
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..nodes.len()).filter(|&i| waiting[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for next in graph.neighbors(nodes[i]).map(|n| graph[n]) {
            waiting[next] -= 1;
            if waiting[next] == 0 {
                ready.push(Reverse(next));
            }
        }
    }
    order
}

/// A cycle through `start` that stays inside its strongly connected component.
pub(super) fn walk_cycle(
    graph: &DiGraph<usize, ()>,
    nodes: &[NodeIndex],
    start: usize,
    members: &[usize],
) -> Vec<usize> {
    // Breadth-first from start's successors back to start gives a shortest cycle.
    let mut previous: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(at) = queue.pop_front() {
        for next in graph.neighbors(nodes[at]).map(|n| graph[n]) {
            if !members.contains(&next) || previous.contains_key(&next) {
                continue;
            }
            previous.insert(next, at);
            if next == start {
                let mut cycle = vec![start];
                let mut cur = at;
                while cur != start {
                    cycle.push(cur);
                    cur = previous[&cur];
                }
                cycle[1..].reverse();
                return cycle;
            }
            queue.push_back(next);
        }
    }
    vec![start]
}

pub(super) fn check_input_kinds(raw: &[RawStage], registry: &Registry, found: &mut Findings) {
    let output_kind = |id: &str| {
        let stage = raw.iter().find(|s| s.id == id)?;
        registry.stage(stage.kind.as_deref()?).map(|(k, _)| k.output_kind())
    };
    for stage in raw {
        let Some((kind, _)) = stage.kind.as_deref().and_then(|k| registry.stage(k)) else { continue };
        let provided: Vec<(&str, &str)> =
            stage.needs.iter().filter_map(|(n, _)| Some((n.as_str(), output_kind(n)?))).collect();
        for wanted in kind.input_kinds() {
            if !provided.iter().any(|(_, k)| k == wanted) {
                let have = if provided.is_empty() {
                    "it needs no stage".to_string()
                } else {
                    format!(
                        "its needs provide: {}",
                        provided
                            .iter()
                            .map(|(n, k)| format!("{k} (from `{n}`)"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                found.push(
                    Diagnostic::at(
                        found.file(),
                        stage.use_pos,
                        format!(
                            "stage `{}` ({}) needs an input of kind `{wanted}`; {have}",
                            stage.id,
                            kind.kind()
                        ),
                    )
                    .help(format!("add the stage that makes the {wanted} to its `needs`")),
                );
            }
        }
    }
}
