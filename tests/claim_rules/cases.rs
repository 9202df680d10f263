//! The generated cases and what `machine` expects of each. Every dimension comes from `machine`
//! (`ApplyState::ALL` and its aliases, `EngineKind::ALL`, `ControlOp::ALL`, `ControlStatus::ALL`,
//! the bounds in `Params`); nothing here lists a state by hand.

use std::fmt;

use applyd::machine::{
    ApplyOptions, ApplyState, ClaimView, ClaimedVia, ControlOp, ControlStatus, EngineKind,
    OperationClaimView, PendingControls, Rules,
};

/// A value as it is stored: a known name, an older spelling of one, or a string no one knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text<T: 'static> {
    Known(T),
    Alias(&'static str, T),
    Unknown(&'static str),
}

impl<T: Copy + fmt::Display> Text<T> {
    pub fn stored(&self) -> String {
        match self {
            Text::Known(v) => v.to_string(),
            Text::Alias(s, _) | Text::Unknown(s) => s.to_string(),
        }
    }

    /// What a store reads the text as.
    pub fn value(&self) -> Option<T> {
        match self {
            Text::Known(v) | Text::Alias(_, v) => Some(*v),
            Text::Unknown(_) => None,
        }
    }

    /// Only the known spellings can be held by the memory store's typed rows.
    pub fn typed(&self) -> Option<T> {
        match self {
            Text::Known(v) => Some(*v),
            _ => None,
        }
    }
}

/// Every state string a row may carry: the 23 states, their older spellings, and strings that
/// name no state (one differs from a state only in case; the collation is binary).
pub fn state_texts() -> Vec<Text<ApplyState>> {
    let mut all: Vec<_> = ApplyState::ALL.iter().map(|s| Text::Known(*s)).collect();
    all.extend(ApplyState::ALIASES.iter().map(|(a, s)| Text::Alias(a, *s)));
    all.push(Text::Unknown("no_such_state"));
    all.push(Text::Unknown("RUNNING"));
    all
}

pub fn engine_texts(with_unknown: bool) -> Vec<Text<EngineKind>> {
    let mut all: Vec<_> = EngineKind::ALL.iter().map(|e| Text::Known(*e)).collect();
    if with_unknown {
        all.push(Text::Unknown("vitess"));
    }
    all
}

/// A lease as a row may hold it. Ages are milliseconds before the frozen "now".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseCase {
    pub name: &'static str,
    pub owner: bool,
    pub hb_age: Option<u64>,
    /// `None`: never claimed.
    pub acquired_age: Option<u64>,
    pub epoch: u64,
    /// Parked: milliseconds from the frozen "now" until the row wakes (0 or less: woken).
    pub wake_in: Option<i64>,
}

impl LeaseCase {
    /// Before its wake time, as the stores compute it (`parked_until > now`).
    pub fn resting(&self) -> bool {
        self.wake_in.is_some_and(|w| w > 0)
    }
}

/// Never claimed, released, owned without a heartbeat, owned and fresh one millisecond inside
/// the staleness bound, owned and stale exactly on it.
pub fn lease_cases(rules: &Rules) -> Vec<LeaseCase> {
    let s = rules.params.stale_after_ms;
    let held = |name, owner, hb_age| LeaseCase {
        name,
        owner,
        hb_age,
        acquired_age: Some(3 * s),
        epoch: 4,
        wake_in: None,
    };
    let parked = |name, owner, hb_age, wake_in| LeaseCase {
        wake_in: Some(wake_in),
        ..held(name, owner, hb_age)
    };
    // The first five are indexed by the cases below (0: never claimed, 4: stale); parks follow.
    vec![
        LeaseCase {
            name: "never claimed",
            owner: false,
            hb_age: None,
            acquired_age: None,
            epoch: 0,
            wake_in: None,
        },
        held("released", false, None),
        held("owned, no heartbeat", true, None),
        held("owned, fresh", true, Some(s - 1)),
        held("owned, stale at the bound", true, Some(s)),
        parked("parked, wakes in 1 ms", false, None, 1),
        parked("parked, woken at the bound", false, None, 0),
        parked(
            "parked, old heartbeat, wakes in a minute",
            false,
            Some(s + 1),
            60_000,
        ),
        parked(
            "owned since, fresh, wake time ahead",
            true,
            Some(s - 1),
            60_000,
        ),
    ]
}

/// One control request row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Req {
    pub op: ControlOp,
    pub status: ControlStatus,
    /// Milliseconds since it was (re)issued.
    pub age: u64,
}

/// A request issued after the lease was acquired (`lease_cases` acquire at 3 × stale).
pub fn newer(rules: &Rules, op: ControlOp) -> Req {
    Req {
        op,
        status: ControlStatus::Pending,
        age: 2 * rules.params.stale_after_ms,
    }
}

/// The operations some claim arm reads: toggling one of them changes `machine`'s decision for
/// some row (found by probing every state, lease and retry point, with and without a start).
pub fn ops_the_arms_read(rules: &Rules) -> Vec<ControlOp> {
    let mut views = Vec::new();
    for state in ApplyState::ALL {
        for lease in lease_cases(rules) {
            for (attempt, updated_age_ms) in retry_points(rules) {
                for start in [false, true] {
                    let controls = PendingControls {
                        start,
                        start_newer_than_lease: start,
                        ..Default::default()
                    };
                    views.push(ClaimView {
                        state: *state,
                        leased: lease.owner,
                        heartbeat_age_ms: lease.hb_age,
                        attempt,
                        updated_age_ms,
                        has_children: true,
                        controls,
                        resting: lease.resting(),
                        asks_now: rules.acts_now(
                            EngineKind::PlanetScale,
                            *state,
                            &controls,
                            &ApplyOptions::default(),
                        ),
                    });
                }
            }
        }
    }
    let decide = |v: &ClaimView| {
        let both = OperationClaimView::single(*v, *v);
        (rules.matching_arm(v), rules.matching_operation_arm(&both))
    };
    ControlOp::ALL
        .iter()
        .copied()
        .filter(|op| {
            views.iter().any(|v| {
                let mut toggled = *v;
                let on = !v.controls.has(*op);
                toggled.controls.set(*op, on);
                decide(v) != decide(&toggled)
            })
        })
        .collect()
}

/// No request; each operation pending alone; a start older than the lease; every pair of the
/// operations the arms read; a start in every finished status.
pub fn request_sets(rules: &Rules) -> Vec<Vec<Req>> {
    let mut sets = vec![vec![]];
    for op in ControlOp::ALL {
        sets.push(vec![newer(rules, *op)]);
    }
    sets.push(vec![Req {
        age: 4 * rules.params.stale_after_ms,
        ..newer(rules, ControlOp::Start)
    }]);
    let read = ops_the_arms_read(rules);
    for (i, a) in read.iter().enumerate() {
        for b in &read[i + 1..] {
            sets.push(vec![newer(rules, *a), newer(rules, *b)]);
        }
    }
    for status in ControlStatus::ALL.iter().filter(|s| s.is_finished()) {
        sets.push(vec![Req {
            status: *status,
            ..newer(rules, ControlOp::Start)
        }]);
    }
    sets
}

/// Each operation pending alone, and none.
pub fn single_requests(rules: &Rules) -> Vec<Vec<Req>> {
    std::iter::once(vec![])
        .chain(ControlOp::ALL.iter().map(|op| vec![newer(rules, *op)]))
        .collect()
}

/// The attempt and freshness of a row: on both sides of the retry budget and of the freshness
/// window, and well inside both.
pub fn retry_points(rules: &Rules) -> Vec<(u32, u64)> {
    let b = rules.params.retry_budget;
    let f = rules.params.retry_freshness_ms;
    let mut points = Vec::new();
    for attempt in [0, b - 1, b] {
        for updated in [1_000, f - 1, f] {
            points.push((attempt, updated));
        }
    }
    points
}

/// An apply row or an operation row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side {
    pub state: Text<ApplyState>,
    pub lease: LeaseCase,
    pub attempt: u32,
    pub updated_age: u64,
}

impl Side {
    pub fn new(state: Text<ApplyState>, lease: LeaseCase) -> Side {
        Side {
            state,
            lease,
            attempt: 0,
            updated_age: 1_000,
        }
    }
}

/// One apply as the test stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub engine: Text<EngineKind>,
    pub apply: Side,
    /// The operation row (and one task row); `None`: the apply has no child rows yet.
    pub op: Option<Side>,
    pub requests: Vec<Req>,
    /// Milliseconds since the apply entered its state.
    pub state_age: u64,
    /// The apply is a rollout of this one operation: its operation is claimed on its own view
    /// on both paths (its apply holds no lease).
    pub rollout: bool,
}

impl Case {
    /// An apply whose operation row mirrors it, as a single-operation apply's does.
    pub fn mirrored(engine: Text<EngineKind>, apply: Side, requests: Vec<Req>) -> Case {
        Case {
            engine,
            apply,
            op: Some(apply),
            requests,
            state_age: apply.updated_age,
            rollout: false,
        }
    }

    /// The pending requests as `side`'s claim arms see them (a start is newer than this side's
    /// lease when it was issued after that lease was acquired).
    pub fn controls(&self, side: &Side) -> PendingControls {
        let mut c = PendingControls::default();
        for r in self
            .requests
            .iter()
            .filter(|r| r.status == ControlStatus::Pending)
        {
            c.set(r.op, true);
        }
        c.start_newer_than_lease = self.requests.iter().any(|r| {
            r.op == ControlOp::Start
                && r.status == ControlStatus::Pending
                && side
                    .lease
                    .acquired_age
                    .is_none_or(|acquired| r.age < acquired)
        });
        c
    }

    fn view(&self, rules: &Rules, side: &Side, state: ApplyState, has_children: bool) -> ClaimView {
        let controls = self.controls(side);
        ClaimView {
            state,
            leased: side.lease.owner,
            heartbeat_age_ms: side.lease.hb_age,
            attempt: side.attempt,
            updated_age_ms: side.updated_age,
            has_children,
            controls,
            resting: side.lease.resting(),
            // The stores read every row with the rules' own decision; an engine no one knows
            // acts on nothing.
            asks_now: self
                .engine
                .value()
                .is_some_and(|e| rules.acts_now(e, state, &controls, &ApplyOptions::default())),
        }
    }

    /// The apply row as the claim arms see it (`None`: a store cannot read it).
    pub fn apply_view(&self, rules: &Rules) -> Option<ClaimView> {
        self.engine.value()?;
        Some(self.view(
            rules,
            &self.apply,
            self.apply.state.value()?,
            self.op.is_some(),
        ))
    }

    /// The operation row as the operation arms see it.
    pub fn operation_view(&self, rules: &Rules) -> Option<ClaimView> {
        let op = self.op.as_ref()?;
        Some(self.view(rules, op, op.state.value()?, true))
    }

    /// `machine`'s decision for a rollout's operation, on either path: the operation arms on
    /// its own view (one operation: its start gate is open), and the apply arm that matches it.
    pub fn expect_rollout_claim(&self, rules: &Rules) -> Option<(ClaimedVia, ApplyState)> {
        // A rollout whose apply row cannot be read is not driven at all.
        self.apply.state.value()?;
        let op = self.operation_view(rules)?;
        let v = OperationClaimView {
            op,
            parent: op,
            start_open: true,
        };
        let op_arm = rules.matching_operation_arm(&v)?;
        let mv = rules.apply_claim(self.engine.value()?, &op)?;
        Some((
            ClaimedVia::Operation {
                op: op_arm,
                parent: mv.arm,
            },
            mv.to,
        ))
    }

    /// `machine`'s decision on the apply path: the arm and the state the claim lands in.
    pub fn expect_apply_claim(&self, rules: &Rules) -> Option<(ClaimedVia, ApplyState)> {
        if self.rollout {
            return self.expect_rollout_claim(rules);
        }
        let mv = rules.apply_claim(self.engine.value()?, &self.apply_view(rules)?)?;
        Some((ClaimedVia::Apply(mv.arm), mv.to))
    }

    /// `machine`'s decision on the operation path.
    pub fn expect_operation_claim(&self, rules: &Rules) -> Option<(ClaimedVia, ApplyState)> {
        if self.rollout {
            return self.expect_rollout_claim(rules);
        }
        let v = OperationClaimView::single(self.operation_view(rules)?, self.apply_view(rules)?);
        let (op_arm, mv) = rules.operation_claim(self.engine.value()?, &v)?;
        Some((
            ClaimedVia::Operation {
                op: op_arm,
                parent: mv.arm,
            },
            mv.to,
        ))
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |s: &Side| {
            format!(
                "{} ({}, attempt {}, updated {} ms ago)",
                s.state.stored(),
                s.lease.name,
                s.attempt,
                s.updated_age
            )
        };
        write!(
            f,
            "{} apply {}, operation {}, requests [",
            self.engine.stored(),
            side(&self.apply),
            self.op.as_ref().map_or("none".into(), side)
        )?;
        for (i, r) in self.requests.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{} {} {} ms ago", r.op, r.status, r.age)?;
        }
        write!(f, "]")
    }
}

/// The claim-path cases: every state (known, alias, unknown) crossed with every lease situation
/// and every request set; with every engine; with every retry point; without child rows. The
/// operation row mirrors its apply.
pub fn mirrored_cases(rules: &Rules) -> Vec<Case> {
    let mut cases = Vec::new();
    let leases = lease_cases(rules);
    let ps = Text::Known(EngineKind::PlanetScale);
    for state in state_texts() {
        for lease in &leases {
            for requests in request_sets(rules) {
                cases.push(Case::mirrored(ps, Side::new(state, *lease), requests));
            }
            for engine in engine_texts(true) {
                for op in [ControlOp::Start, ControlOp::Stop, ControlOp::Cancel] {
                    cases.push(Case::mirrored(
                        engine,
                        Side::new(state, *lease),
                        vec![newer(rules, op)],
                    ));
                }
            }
            for engine in engine_texts(false) {
                for (attempt, updated_age) in retry_points(rules) {
                    let side = Side {
                        attempt,
                        updated_age,
                        ..Side::new(state, *lease)
                    };
                    cases.push(Case::mirrored(engine, side, vec![]));
                }
            }
        }
        for engine in engine_texts(false) {
            for requests in [vec![], vec![newer(rules, ControlOp::Start)]] {
                for lease in [leases[0], leases[4]] {
                    cases.push(Case {
                        op: None,
                        ..Case::mirrored(engine, Side::new(state, lease), requests.clone())
                    });
                }
            }
        }
    }
    cases
}

/// Operation-path cases where the operation row and its parent differ: every pair of states,
/// and every pair of lease situations.
pub fn operation_pair_cases(rules: &Rules) -> Vec<Case> {
    let mut cases = Vec::new();
    let leases = lease_cases(rules);
    let ps = Text::Known(EngineKind::PlanetScale);
    let sets = [
        vec![],
        vec![newer(rules, ControlOp::Start)],
        vec![newer(rules, ControlOp::Stop)],
    ];
    for op_state in state_texts() {
        for parent_state in state_texts() {
            for lease in [leases[0], leases[4]] {
                for requests in &sets {
                    cases.push(Case {
                        op: Some(Side::new(op_state, lease)),
                        ..Case::mirrored(ps, Side::new(parent_state, lease), requests.clone())
                    });
                }
            }
        }
        for op_lease in &leases {
            for parent_lease in &leases {
                for requests in &sets[..2] {
                    cases.push(Case {
                        op: Some(Side::new(op_state, *op_lease)),
                        ..Case::mirrored(ps, Side::new(op_state, *parent_lease), requests.clone())
                    });
                }
            }
        }
    }
    // The retry arm reads the parent's attempt and freshness, the operation's own never.
    for (attempt, updated_age) in retry_points(rules) {
        for op_state in state_texts() {
            let parent = Side {
                attempt,
                updated_age,
                ..Side::new(Text::Known(ApplyState::FailedRetryable), leases[4])
            };
            cases.push(Case {
                op: Some(Side::new(op_state, leases[4])),
                ..Case::mirrored(ps, parent, vec![])
            });
        }
    }
    cases
}

/// The mirrored cases' operations as the one operation of a rollout: every operation state,
/// lease, request set and retry point, claimed on the operation's own view. The apply row waits
/// stopped without a lease, a state no claim range of its own finds: whatever a rollout's
/// apply shows (its operations' derivation), its operations must be found through them.
pub fn rollout_cases(rules: &Rules) -> Vec<Case> {
    // Released at the operations' epoch (the apply's epoch is its operations' counter).
    let parent = Side::new(Text::Known(ApplyState::Stopped), lease_cases(rules)[1]);
    mirrored_cases(rules)
        .into_iter()
        .map(|c| Case {
            rollout: true,
            apply: Side {
                state: parent.state,
                lease: parent.lease,
                ..c.apply
            },
            ..c
        })
        .collect()
}
