//! The stateright model of applyd: workers that claim, heartbeat, crash, pause and resume,
//! stepping through applyd's own transition table, claim arms and worker core (`Drive`), against
//! a compact store with MemoryStore's semantics and small nondeterministic engines.

pub mod config;
pub mod engine;
pub mod graph;
pub mod report;
pub mod state;
pub mod world;

pub use config::{Config, Preset};
pub use state::{Action, Outcome, State};
pub use world::ApplydModel;
