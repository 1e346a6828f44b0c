//! The local terminal of `manifold run`: whether there is one, its size, and raw mode.

use std::io::IsTerminal;
use std::os::fd::{AsFd, AsRawFd};

use nix::libc;
use nix::sys::termios::{self, SetArg, Termios};

nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);

/// Whether `run` gives the dyno a pseudo-terminal: only when both ends the user sees are a
/// terminal (as Heroku's CLI decides), and `--no-tty` was not given.
pub fn wants_tty(no_tty: bool) -> bool {
    !no_tty && std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// `(cols, rows)` of the terminal behind `fd`; `None` if it is not one or reports no size
/// (a fresh pseudo-terminal says 0x0).
pub fn size(fd: impl AsFd) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into `ws`, which we own and which outlives the
    // call; the descriptor is borrowed, so it stays open for the call.
    unsafe { tiocgwinsz(fd.as_fd().as_raw_fd(), &mut ws) }.ok()?;
    (ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// The size of the terminal on stdout, the one the dyno's output is shown on.
pub fn stdout_size() -> Option<(u16, u16)> {
    size(std::io::stdout())
}

/// The terminal on stdin in raw mode (no echo, no line editing, ^C and ^Z are plain bytes)
/// for as long as this lives; dropping it puts back the settings it found, also when the
/// session ends in an error or a panic.
#[derive(Debug)]
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    pub fn enter() -> nix::Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // Nothing better to do on failure: the terminal went away.
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_of_a_pty_and_of_a_file() {
        let ws = libc::winsize {
            ws_row: 33,
            ws_col: 111,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&ws), None).expect("openpty");
        assert_eq!(size(&pty.slave), Some((111, 33)));
        let zero = nix::pty::openpty(None, None).expect("openpty");
        assert_eq!(size(&zero.slave), None, "0x0 is no size");
        let file = tempfile::tempfile().expect("tempfile");
        assert_eq!(size(&file), None);
    }
}
