//! A `wasi:http/proxy` component, WASI preview 2's HTTP handler: it exports
//! `wasi:http/incoming-handler`, whose `handle` its host (`wasmtime serve`, which is also how
//! wasmlet runs it) calls once per request with the request and a slot for the response. Each
//! request gets a greeting (`$GREETING`, from the pod's `env`, or a default), its method, its
//! path and its body; `/fail` gets a 500. Each request is logged on stderr (`kubectl logs`).

use std::io::{self, Read, Write};

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// The largest request body it answers (1 MiB); a longer one gets 413.
const MAX_BODY: u64 = 1 << 20;

struct HttpHello;

wasi::http::proxy::export!(HttpHello);

impl Guest for HttpHello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let method = method_name(&request.method()).to_string();
        let (status, text) = if path == "/fail" {
            (500, b"failing on purpose\n".to_vec())
        } else {
            match read_body(&request) {
                Ok(body) if body.len() as u64 > MAX_BODY => (413, b"body over 1 MiB\n".to_vec()),
                Ok(body) => (200, greeting(&method, &path, &body)),
                Err(err) => (400, format!("cannot read the body: {err}\n").into_bytes()),
            }
        };
        respond(response_out, status, &text);
        // One write per line: concurrent instances share stderr, and eprintln! writes in pieces.
        let _ = io::stderr().write_all(format!("{method} {path} {status}\n").as_bytes());
    }
}

/// The request's body (empty without one), at most `MAX_BODY + 1` bytes of it.
fn read_body(request: &IncomingRequest) -> io::Result<Vec<u8>> {
    let incoming = request.consume().expect("the body is consumed once");
    let stream = incoming.stream().expect("the stream is taken once");
    let mut body = Vec::new();
    // The stream is a child of `incoming` and must go first: `take` moves it into a temporary
    // dropped at the end of the statement.
    stream.take(MAX_BODY + 1).read_to_end(&mut body)?;
    Ok(body)
}

fn greeting(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let hello =
        std::env::var("GREETING").unwrap_or_else(|_| "Hello from a wasi:http component!".into());
    let mut text = format!("{hello}\nmethod={method}\npath={path}\n").into_bytes();
    if !body.is_empty() {
        text.extend_from_slice(b"body=");
        text.extend_from_slice(body);
        if !body.ends_with(b"\n") {
            text.push(b'\n');
        }
    }
    text
}

fn method_name(method: &Method) -> &str {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(name) => name,
    }
}

/// Sends `status` with a `text/plain` body: headers first, then the body written and finished.
fn respond(response_out: ResponseOutparam, status: u16, text: &[u8]) {
    let headers = Fields::from_list(&[("content-type".to_string(), b"text/plain".to_vec())])
        .expect("a valid header");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("a valid status");
    let body = response.body().expect("the body is taken once");
    ResponseOutparam::set(response_out, Ok(response));

    let mut out = body.write().expect("the stream is taken once");
    // An error here means the client went away: there is no one left to tell. (`Write::flush`
    // blocks until the bytes are out; the stream's own `flush` only starts it.)
    let _ = out.write_all(text).and_then(|()| Write::flush(&mut out));
    drop(out);
    let _ = OutgoingBody::finish(body, None);
}
