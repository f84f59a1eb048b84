//! The `runvisor` binary: everything is in the library's [`runvisor::cli`].

fn main() -> std::process::ExitCode {
    runvisor::cli::main()
}
