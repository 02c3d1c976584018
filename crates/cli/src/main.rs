//! The `ferry` binary: a thin shell over [`ferry_cli::main`].

fn main() -> std::process::ExitCode {
    ferry_cli::main()
}
