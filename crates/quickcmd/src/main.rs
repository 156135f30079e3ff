//! `quickcmd`: the controller command line. Everything lives in the library.

fn main() -> std::process::ExitCode {
    quickcmd::cli::main()
}
