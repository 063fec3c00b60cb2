//! The `pkb-edge` binary: the allocator, then the command line in `pkb_edge::cli`.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    pkb_edge::cli::main()
}
