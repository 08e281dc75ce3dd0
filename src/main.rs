//! The `connstatus` binary: a thin shell over the library's commands.

fn main() -> std::process::ExitCode {
    connstatus::cli::main()
}
