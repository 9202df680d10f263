//! The README's first command, as a test: the demo must end with every apply completed, one
//! deploy request per PlanetScale apply, and both kills followed by a reclaim.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_kills_two_drivers_and_every_apply_still_completes() {
    let mut lines = Vec::new();
    let summary = applyd::demo::run(|l| lines.push(l.to_string())).await;
    let all = lines.join("\n") + "\n" + &summary.lines.join("\n");
    assert!(summary.ok, "{all}");
    assert!(all.contains("reclaimed by"), "{all}");
    assert!(all.contains("while apply-1 was in"), "{all}");
}
