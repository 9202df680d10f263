use std::process::ExitCode;

/// Options of `applyd demo`.
#[derive(clap::Args)]
pub struct DemoArgs {}

pub fn run(_args: DemoArgs) -> ExitCode {
    let summary = super::runtime().block_on(crate::demo::run(|line| println!("{line}")));
    for line in &summary.lines {
        println!("{line}");
    }
    if summary.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
