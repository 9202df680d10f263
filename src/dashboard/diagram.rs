//! The state diagram of one engine, laid out and drawn as SVG from the transition table, with
//! the states an apply passed through and the state it is in highlighted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::{Mutex, OnceLock};

use layout::backends::svg::SVGWriter;
use layout::gv::{DotParser, GraphBuilder};

use crate::machine::render::edges;
use crate::machine::{ApplyState, EngineKind};

const CURRENT_FILL: &str = "#f6c177";
const VISITED_FILL: &str = "#c6dbef";
const OTHER_FILL: &str = "#ffffff";

/// The diagram as Graphviz dot: every state the engine's shipped rows reach, one edge per
/// (from, to) pair of the table.
fn dot(engine: EngineKind, visited: &BTreeSet<ApplyState>, current: ApplyState) -> String {
    let pairs = edges(engine);
    let states: BTreeSet<ApplyState> = pairs.keys().flat_map(|(f, t)| [*f, *t]).collect();
    let mut s = String::from("digraph applyd {\n");
    for st in &states {
        let fill = if *st == current {
            CURRENT_FILL
        } else if visited.contains(st) {
            VISITED_FILL
        } else {
            OTHER_FILL
        };
        // State names are `machine`'s own identifiers ([a-z_]), safe in dot and in SVG text.
        let _ = writeln!(
            s,
            "  {st} [shape=box, style=filled, fillcolor=\"{fill}\", label=\"{}\"];",
            st.as_str().replace('_', " ")
        );
    }
    for (from, to) in pairs.keys() {
        if from != to {
            let _ = writeln!(s, "  {from} -> {to};");
        }
    }
    s.push_str("}\n");
    s
}

/// The SVG of the diagram; an error names what the layout refused (never a panic).
pub fn svg(
    engine: EngineKind,
    visited: &BTreeSet<ApplyState>,
    current: ApplyState,
) -> Result<String, String> {
    let text = dot(engine, visited, current);
    let mut parser = DotParser::new(&text);
    let graph = parser
        .process()
        .map_err(|e| format!("the state diagram could not be read: {e}"))?;
    let mut builder = GraphBuilder::new();
    builder.visit_graph(&graph);
    let mut visual = builder.get();
    let mut writer = SVGWriter::new();
    visual.do_it(false, false, false, &mut writer);
    let drawn = writer.finalize();
    // Inline in a page: the XML declaration has no place there.
    match drawn.find("<svg") {
        Some(start) => Ok(drawn[start..].to_string()),
        None => Err("the state diagram's layout produced no SVG".into()),
    }
}

/// [`svg`], kept per (engine, passed-through states, current state): an open page asks every
/// second, and the layout is the costly part.
pub fn cached_svg(
    engine: EngineKind,
    visited: &BTreeSet<ApplyState>,
    current: ApplyState,
) -> Result<String, String> {
    type Key = (EngineKind, BTreeSet<ApplyState>, ApplyState);
    static CACHE: OnceLock<Mutex<BTreeMap<Key, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (engine, visited.clone(), current);
    if let Some(hit) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(hit.clone());
    }
    let drawn = svg(engine, visited, current)?;
    let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
    // Bounded: the combinations seen are few, but never let them grow without end.
    if map.len() >= 256 {
        map.clear();
    }
    map.insert(key, drawn.clone());
    Ok(drawn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diagram_draws_every_state_of_the_table_and_marks_where_the_apply_is() {
        let visited: BTreeSet<_> = [ApplyState::Pending, ApplyState::Running].into();
        let svg = svg(EngineKind::Spirit, &visited, ApplyState::WaitingForCutover).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for (from, to) in edges(EngineKind::Spirit).keys() {
            for st in [from, to] {
                assert!(svg.contains(&st.as_str().replace('_', " ")), "{st} missing");
            }
        }
        assert!(svg.contains(&CURRENT_FILL[1..]) && svg.contains(&VISITED_FILL[1..]));
        let ps = super::svg(
            EngineKind::PlanetScale,
            &BTreeSet::new(),
            ApplyState::Pending,
        )
        .unwrap();
        assert!(ps.contains("creating deploy request"));
    }
}
