fn main() -> std::process::ExitCode {
    applyd::cli::main()
}
