//! Seeds kept under `sim/regressions/`: each must keep its recorded outcome.

use applyd_sim::Regression;

#[test]
fn every_regression_seed_keeps_its_outcome() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/regressions");
    let all = Regression::load_dir(std::path::Path::new(dir)).unwrap();
    assert!(!all.is_empty(), "no regression files in {dir}");
    let failures: Vec<String> = all
        .iter()
        .filter_map(|(path, r)| r.check().err().map(|e| format!("{path}: {e}")))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}
