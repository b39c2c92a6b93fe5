//! Helpers shared by the CLI tests: the binary, processes that die with the test, free ports.

use std::process::{Child, Command};

pub fn canopy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_canopy"))
}

/// Kills the process when the test ends, pass or fail.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd`, fails the test with its output unless it succeeds, returns its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn free_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

/// Issues a certificate for node `id` of cluster "lab", region "lab", with the CA in `dir`;
/// returns what `canopy certs issue` printed.
pub fn issue(dir: &str, id: u64, role: &str) -> String {
    ok(canopy().args([
        "certs",
        "issue",
        "--dir",
        dir,
        "--cluster",
        "lab",
        "--id",
        &id.to_string(),
        "--role",
        role,
        "--region",
        "lab",
    ]))
}
