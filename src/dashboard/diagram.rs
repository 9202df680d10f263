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

/// States that more than this many others move into are common exits.
const COMMON_EXIT_IN: usize = 5;

/// The states most others can move into (failing, being cancelled, held): by the table.
pub fn common_exits(engine: EngineKind) -> BTreeSet<ApplyState> {
    let mut into: BTreeMap<ApplyState, usize> = BTreeMap::new();
    for (from, to) in edges(engine).keys() {
        if from != to {
            *into.entry(*to).or_default() += 1;
        }
    }
    into.into_iter()
        .filter(|(_, n)| *n > COMMON_EXIT_IN)
        .map(|(s, _)| s)
        .collect()
}

/// What the diagram leaves out, for its legend.
pub fn legend(engine: EngineKind) -> String {
    let names: Vec<&str> = common_exits(engine).iter().map(|s| s.as_str()).collect();
    if names.is_empty() {
        return String::new();
    }
    format!(
        "Moves into {} are drawn only from the states this apply is in or passed through.",
        names.join(", ")
    )
}

/// The diagram as Graphviz dot: every state the engine's shipped rows reach, one edge per
/// (from, to) pair of the table.
fn dot(engine: EngineKind, visited: &BTreeSet<ApplyState>, current: ApplyState) -> String {
    let pairs = edges(engine);
    // The states an apply of this engine can reach from `pending` by the table's moves (the
    // table also has rows for states only the other engine enters).
    let mut states: BTreeSet<ApplyState> = [ApplyState::Pending, current].into();
    loop {
        let before = states.len();
        let next: Vec<ApplyState> = pairs
            .keys()
            .filter(|(f, t)| f != t && states.contains(f))
            .map(|(_, t)| *t)
            .collect();
        states.extend(next);
        if states.len() == before {
            break;
        }
    }
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
    let common = common_exits(engine);
    for (from, to) in pairs.keys().filter(|(f, _)| states.contains(f)) {
        // The moves into a common exit are drawn only from where this apply is or was: from
        // everywhere they would hide the rest.
        let drawn = !common.contains(to) || *from == current || visited.contains(from);
        if from != to && drawn {
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
        for st in [
            ApplyState::Running,
            ApplyState::WaitingForCutover,
            ApplyState::CuttingOver,
            ApplyState::Completed,
            ApplyState::Failed,
        ] {
            {
                assert!(svg.contains(&st.as_str().replace('_', " ")), "{st} missing");
            }
        }
        assert!(svg.contains(&CURRENT_FILL[1..]) && svg.contains(&VISITED_FILL[1..]));
        assert!(
            !svg.contains("creating deploy request"),
            "a Spirit apply never is"
        );
        let ps = super::svg(
            EngineKind::PlanetScale,
            &BTreeSet::new(),
            ApplyState::Pending,
        )
        .unwrap();
        assert!(ps.contains("creating deploy request"));
    }
}
