//! The pure rules of applyd: states, claim classes and arms, the transition table, control
//! requests and invariants. No I/O, no async, no clock reads, no randomness.

pub mod apply;
pub mod claim;
pub mod control;
pub mod explain;
pub mod invariants;
pub mod moves;
pub mod observe;
pub mod policy;
pub mod render;
pub mod rollout;
pub mod rules;
pub mod states;
pub mod table;
pub mod task;
pub mod vocabulary;
pub mod waits;

pub use claim::{
    ClaimArm, ClaimClass, ClaimView, ClaimedVia, OperationArm, OperationClaimView, PendingControls,
};
pub use control::{Disposition, Refusal};
pub use moves::{ClaimMove, ExpiryReason};
pub use rules::{Mutant, Params, Rules};
pub use states::{
    ApplyState, ControlOp, ControlStatus, EngineKind, EngineState, TaskState, UnknownName,
};
pub use table::{ApplyOptions, Effect, EngineCall, Event, Probe, ResumeField, Row, RowId, TABLE};
