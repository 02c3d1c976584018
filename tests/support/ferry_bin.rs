//! `ferry` as a process for the tests that need one: its own environment (production
//! commands read credentials and endpoints from it), real exit codes and real pipes.

fn main() -> std::process::ExitCode {
    ferry_cli::main()
}
