//! The `runvisor` binary: everything is in the library's [`runvisor::cli`].

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    runvisor::cli::main()
}
