//! What the dashboard's templates show, built from the store's status views. Every text here
//! comes from the rules (`Rules::explain`), the stores' timelines or the engines' progress; the
//! templates (`templates/dashboard/`) lay it out and escape it.

use std::collections::{BTreeMap, BTreeSet};

use askama::Template;

use crate::machine::explain::PERSON_REQUESTS;
use crate::machine::{ApplyState, ControlOp, EngineKind, TaskState};
use crate::report::age;
use crate::store::status::ApplyStatus;
use crate::store::timeline::TimelineEntry;

/// One apply in the list.
pub struct RowView {
    pub id: u64,
    pub identifier: String,
    pub engine: &'static str,
    pub target: String,
    pub state: &'static str,
    pub percent: u32,
    pub progress: String,
    pub owner: String,
    pub epoch: u64,
    pub heartbeat: String,
    pub why: String,
}

pub struct CountView {
    pub state: &'static str,
    pub n: usize,
    pub selected: bool,
}

pub struct EngineView {
    pub name: &'static str,
    pub selected: bool,
}

/// The list's filters, as given in its query string.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct Filter {
    pub state: Option<String>,
    pub engine: Option<String>,
    pub target: Option<String>,
}

impl Filter {
    fn given(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|s| !s.is_empty())
    }

    pub fn keeps(&self, a: &ApplyStatus) -> bool {
        Self::given(&self.state).is_none_or(|s| a.state.as_str() == s)
            && Self::given(&self.engine).is_none_or(|e| a.engine.as_str() == e)
            && Self::given(&self.target).is_none_or(|t| a.target.to_string().contains(t))
    }

    /// The query string that keeps these filters (for the live updates of the list).
    pub fn query(&self) -> String {
        let mut pairs = form_pairs();
        for (k, v) in [
            ("state", &self.state),
            ("engine", &self.engine),
            ("target", &self.target),
        ] {
            if let Some(v) = Self::given(v) {
                pairs.append_pair(k, v);
            }
        }
        pairs.finish()
    }
}

fn form_pairs() -> form_urlencoded::Serializer<'static, String> {
    form_urlencoded::Serializer::new(String::new())
}

#[derive(Template)]
#[template(path = "dashboard/list_rows.html")]
pub struct ListRows {
    pub rows: Vec<RowView>,
}

/// One webhook endpoint's deliveries, for the list page.
pub struct EndpointView {
    pub endpoint: String,
    pub delivered: u64,
    pub pending: u64,
    pub failing: u64,
    pub abandoned: u64,
    pub oldest: String,
    pub last_error: String,
}

pub fn endpoint(h: &crate::store::webhooks::EndpointHealth) -> EndpointView {
    EndpointView {
        endpoint: h.endpoint.clone(),
        delivered: h.delivered,
        pending: h.pending,
        failing: h.failing,
        abandoned: h.abandoned,
        oldest: age(h.oldest_undelivered_age_ms),
        last_error: h.last_error.clone().unwrap_or_default(),
    }
}

#[derive(Template)]
#[template(path = "dashboard/list.html")]
pub struct ListPage {
    /// Webhook endpoints and how their deliveries stand (failing ones first to the eye).
    pub webhooks: Vec<EndpointView>,
    pub counts: Vec<CountView>,
    pub engines: Vec<EngineView>,
    pub target: String,
    pub rows_html: String,
    pub live_url: String,
}

#[derive(Template)]
#[template(path = "dashboard/login.html")]
pub struct LoginPage {
    pub refusal: Option<String>,
}

/// How far an apply's work is, 0–100: each task counts its engine's percent, or all of it once
/// completed.
fn task_percent(state: TaskState, percent: Option<f64>) -> u32 {
    if state == TaskState::Completed {
        return 100;
    }
    percent.map_or(0, |p| p.clamp(0.0, 100.0).round() as u32)
}

fn apply_percent(a: &ApplyStatus) -> u32 {
    if a.tasks.is_empty() {
        return if a.state == ApplyState::Completed {
            100
        } else {
            0
        };
    }
    let sum: u32 = a
        .tasks
        .iter()
        .map(|t| task_percent(t.state, t.progress.as_ref().and_then(|p| p.percent)))
        .sum();
    sum / a.tasks.len() as u32
}

/// `3/5 tasks`, then the first running task's engine words.
fn progress_text(a: &ApplyStatus) -> String {
    let engine_words = a
        .tasks
        .iter()
        .filter(|t| !t.state.is_terminal())
        .find_map(|t| t.progress.as_ref())
        .map(|p| p.summary());
    match engine_words {
        Some(words) => format!("{} · {words}", a.progress()),
        None => a.progress(),
    }
}

fn owner(a: &ApplyStatus) -> String {
    match (&a.lease_owner, a.parked_wake_in_ms) {
        (Some(o), _) => o.clone(),
        (None, Some(_)) => "(parked)".into(),
        (None, None) => "—".into(),
    }
}

pub fn row(a: &ApplyStatus) -> RowView {
    RowView {
        id: a.id,
        identifier: a.identifier.clone(),
        engine: a.engine.as_str(),
        target: a.target.to_string(),
        state: a.state.as_str(),
        percent: apply_percent(a),
        progress: progress_text(a),
        owner: owner(a),
        epoch: a.lease_epoch,
        heartbeat: age(a.heartbeat_age_ms),
        why: a
            .explanation
            .as_ref()
            .map(|e| e.person.clone().unwrap_or_else(|| e.claim.clone()))
            .unwrap_or_default(),
    }
}

/// The counts per state (of every apply listed, before the filter), and the engine choices.
pub fn list_page(
    all: &[ApplyStatus],
    filter: &Filter,
    rows_html: String,
    webhooks: Vec<EndpointView>,
) -> ListPage {
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for a in all {
        *counts.entry(a.state.as_str()).or_default() += 1;
    }
    let chosen_state = Filter::given(&filter.state);
    let chosen_engine = Filter::given(&filter.engine);
    ListPage {
        webhooks,
        counts: counts
            .into_iter()
            .map(|(state, n)| CountView {
                state,
                n,
                selected: chosen_state == Some(state),
            })
            .collect(),
        engines: EngineKind::ALL
            .iter()
            .map(|e| EngineView {
                name: e.as_str(),
                selected: chosen_engine == Some(e.as_str()),
            })
            .collect(),
        target: Filter::given(&filter.target).unwrap_or("").to_string(),
        rows_html,
        live_url: format!("/events/applies?{}", filter.query()),
    }
}

pub struct TaskView {
    pub n: usize,
    pub table: String,
    pub state: &'static str,
    pub percent: u32,
    pub summary: String,
    pub why: Option<String>,
}

pub struct OperationView {
    pub n: usize,
    pub deployment: String,
    pub state: &'static str,
    pub owner: String,
    pub epoch: u64,
    pub heartbeat: String,
    pub tasks: String,
    pub why: String,
}

pub struct EntryView {
    pub age: String,
    pub kind: &'static str,
    pub text: String,
    pub who: String,
}

pub struct ActionView {
    /// The request's name in the API path (`skip-revert`).
    pub path: String,
    pub label: &'static str,
    pub enabled: bool,
    pub pending: bool,
    /// The refusal the rules would give, shown on a disabled button.
    pub why_not: String,
}

#[derive(Template)]
#[template(path = "dashboard/apply_live.html")]
pub struct ApplyLive {
    pub id: u64,
    pub identifier: String,
    pub engine: &'static str,
    pub target: String,
    pub state: &'static str,
    pub attempt: u32,
    pub owner: String,
    pub epoch: u64,
    pub heartbeat: String,
    pub percent: u32,
    pub progress: String,
    pub explanation: Vec<String>,
    pub wait: Option<String>,
    pub error: Option<String>,
    pub actions: Vec<ActionView>,
    pub operations: Vec<OperationView>,
    pub tasks: Vec<TaskView>,
    pub ddl: Vec<String>,
    pub timeline: Vec<EntryView>,
    pub diagram: String,
    /// What the diagram leaves out.
    pub diagram_legend: String,
}

#[derive(Template)]
#[template(path = "dashboard/apply.html")]
pub struct ApplyPage {
    pub identifier: String,
    pub live_html: String,
    pub live_url: String,
}

fn label(op: ControlOp) -> &'static str {
    match op {
        ControlOp::Cutover => "Cut over",
        ControlOp::Start => "Start",
        ControlOp::Stop => "Stop",
        ControlOp::Cancel => "Cancel",
        ControlOp::Revert => "Revert",
        ControlOp::SkipRevert => "Skip revert",
        ControlOp::Release => "Release",
        ControlOp::Volume => "Volume",
    }
}

fn actions(a: &ApplyStatus) -> Vec<ActionView> {
    let Some(e) = &a.explanation else {
        return Vec::new();
    };
    PERSON_REQUESTS
        .iter()
        .copied()
        // A release only means something on a rollout; elsewhere it is not offered at all.
        .filter(|op| *op != ControlOp::Release || a.rollout.is_some())
        .map(|op| ActionView {
            path: op.as_str().replace('_', "-"),
            label: label(op),
            enabled: e.accepts.contains(&op),
            pending: a.pending_requests.contains(&op),
            why_not: e
                .refuses
                .iter()
                .find(|r| r.request == op)
                .map(|r| r.note.clone())
                .unwrap_or_default(),
        })
        .collect()
}

fn entry(e: &TimelineEntry) -> EntryView {
    EntryView {
        age: age(Some(e.age_ms)),
        kind: e.kind.as_str(),
        text: e.text.clone(),
        who: match (&e.owner, e.epoch) {
            (Some(o), Some(epoch)) => format!("{o} @ epoch {epoch}"),
            (None, Some(epoch)) if epoch > 0 => format!("epoch {epoch}"),
            _ => String::new(),
        },
    }
}

/// The states an apply passed through, by its timeline (it began `pending`).
pub fn visited(timeline: &[TimelineEntry]) -> BTreeSet<ApplyState> {
    let mut out: BTreeSet<_> = timeline.iter().filter_map(|e| e.state).collect();
    out.insert(ApplyState::Pending);
    out
}

pub fn apply_live(a: &ApplyStatus, timeline: &[TimelineEntry], diagram: String) -> ApplyLive {
    ApplyLive {
        id: a.id,
        identifier: a.identifier.clone(),
        engine: a.engine.as_str(),
        target: a.target.to_string(),
        state: a.state.as_str(),
        attempt: a.attempt,
        owner: owner(a),
        epoch: a.lease_epoch,
        heartbeat: age(a.heartbeat_age_ms),
        percent: apply_percent(a),
        progress: progress_text(a),
        explanation: a
            .explanation
            .as_ref()
            .map(|e| e.lines())
            .unwrap_or_default(),
        wait: a.wait.clone(),
        error: a.error.clone(),
        actions: actions(a),
        operations: a
            .operations
            .iter()
            .enumerate()
            .filter(|_| a.rollout.is_some())
            .map(|(i, o)| OperationView {
                n: i + 1,
                deployment: if o.key.is_empty() {
                    o.deployment.clone()
                } else {
                    format!("{} {}", o.deployment, o.key)
                },
                state: o.state.as_str(),
                owner: o.lease_owner.clone().unwrap_or_else(|| "—".into()),
                epoch: o.lease_epoch,
                heartbeat: age(o.heartbeat_age_ms.filter(|_| o.state.is_active())),
                tasks: format!("{}/{} tasks", o.tasks_completed, o.tasks_total),
                why: o
                    .gate
                    .clone()
                    .or_else(|| o.explanation.clone())
                    .unwrap_or_default(),
            })
            .collect(),
        tasks: a
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| TaskView {
                n: i + 1,
                table: t.table.clone().unwrap_or_else(|| "(not recorded)".into()),
                state: t.state.as_str(),
                percent: task_percent(t.state, t.progress.as_ref().and_then(|p| p.percent)),
                summary: t.progress.as_ref().map(|p| p.summary()).unwrap_or_default(),
                why: t.error.clone().filter(|_| t.state.is_failure()),
            })
            .collect(),
        ddl: a.ddl.clone(),
        // Newest first on the page.
        timeline: timeline.iter().rev().map(entry).collect(),
        diagram,
        diagram_legend: super::diagram::legend(a.engine),
    }
}
