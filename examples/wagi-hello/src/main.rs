//! A WAGI handler: CGI over WASI preview 1. wasmlet runs one fresh instance of this module per
//! request, with the request's CGI variables in the environment and its body on stdin; whatever
//! the module writes to stdout (headers, a blank line, the body) is the response.

use std::env;
use std::io::{self, Read, Write};

/// A CGI variable, or "" when the request has none.
fn cgi(name: &str) -> String {
    env::var(name).unwrap_or_default()
}

fn main() -> io::Result<()> {
    let method = cgi("REQUEST_METHOD");
    let mut body = Vec::new();
    if method == "POST" {
        io::stdin().read_to_end(&mut body)?;
    }

    let stdout = io::stdout();
    let mut out = stdout.lock();
    write!(out, "Content-Type: text/plain\n\n")?;
    writeln!(out, "Hello from WebAssembly!")?;
    for name in ["REQUEST_METHOD", "PATH_INFO", "SERVER_NAME"] {
        writeln!(out, "{}={}", name, cgi(name))?;
    }
    if method == "POST" {
        writeln!(out, "Body ({} bytes):", body.len())?;
        out.write_all(&body)?;
        if !body.ends_with(b"\n") {
            writeln!(out)?;
        }
    }
    out.flush()
}
