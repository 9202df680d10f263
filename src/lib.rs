//! applyd: drives online schema changes on MySQL (Spirit) and PlanetScale (deploy requests)
//! from a MySQL table shared by many operator processes, so that a worker may die at any instant
//! and every apply is still reclaimed, resumed from what was persisted, and never does its
//! engine work twice.

pub mod api;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod ddl;
pub mod demo;
pub mod engine;
pub mod machine;
pub mod operator;
pub mod plan;
pub mod report;
pub mod store;
pub mod testkit;
pub mod worker;
