//! Writing to our own stdout and stderr without ever panicking. A reader that goes away
//! (`quickcmd history | head -1`) ends the command quietly with [`EXIT_BROKEN_PIPE`], as a
//! Unix tool killed by SIGPIPE would; a closed or full stderr is ignored, since there is
//! nowhere left to say so.

use std::io::Write;

/// Exit code after the reader of our stdout closed the pipe: what a shell reports for a
/// tool ended by SIGPIPE (128 + 13).
pub const EXIT_BROKEN_PIPE: u8 = 141;

/// Writes `bytes` to stdout and flushes. A closed pipe exits quietly with
/// [`EXIT_BROKEN_PIPE`]; any other failure says so on stderr and exits 1.
pub fn write_stdout(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(error) = out.write_all(bytes).and_then(|()| out.flush()) {
        drop(out);
        stdout_failed(&error);
    }
}

/// Ends the process after stdout failed.
pub fn stdout_failed(error: &std::io::Error) -> ! {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(i32::from(EXIT_BROKEN_PIPE));
    }
    write_stderr(format!("quickcmd: cannot write to stdout: {error}\n").as_bytes());
    std::process::exit(1)
}

/// Writes `bytes` to stderr, ignoring failures.
pub fn write_stderr(bytes: &[u8]) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(bytes).and_then(|()| err.flush());
}

/// `print!` through [`write_stdout`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format!($($arg)*).as_bytes())
    };
}

/// `println!` through [`write_stdout`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}

/// `eprintln!` through [`write_stderr`].
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::write_stderr(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}

pub(crate) use {errln, out, outln};
