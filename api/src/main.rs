//! `hodei`: the control plane binary. All behaviour lives in the library.

fn main() -> std::process::ExitCode {
    hodei_api::cli::main()
}
