//! The client side: HTTP/1.1 served in each connection's own task. A request head is parsed in
//! place (httparse; the header values share the bytes read), the request handled, and the
//! response written with its head and first body bytes in one write — the work a
//! general-purpose server spreads over a dispatcher, its buffers and a timer per request.
//!
//! This path takes the common request: HTTP/1.0 or 1.1, its body (if any) already read in full,
//! no `Transfer-Encoding`, `Expect` or `Upgrade`. Anything else — a body still on its way, a
//! WebSocket or h2c upgrade, HTTP/2's preface, a head that is malformed or too large — hands
//! the connection, with every byte read from it so far, to hyper's server for the rest of its
//! life, which serves it (and answers its errors) as it serves any client.
//!
//! Responses are framed as RFC 9112 §6 says: no body for `HEAD`, 1xx, 204 and 304;
//! `Content-Length` when the response declares one or its body's size is known; else chunked
//! for HTTP/1.1 clients and up to the close for HTTP/1.0 ones. The connection is kept alive as
//! the request asks (its version and `Connection`) unless the response says `close`.

use std::cell::RefCell;
use std::convert::Infallible;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header;
use http::{Method, Request, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{Body, BoxError, DataPlane, Outgoing, Peer, declared_length, empty, full};
use crate::client::http1::{READ_SIZE, RequestFields, Rewind, has_token};

/// How much earlier than the head timeout an idle connection's timer may end: it is moved only
/// when it would end this much too early, not for every request (moving a timer costs as much
/// as parsing a request head).
const TIMER_SLACK: Duration = Duration::from_secs(1);
/// The most header lines in a request head (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// Response bytes gathered before they are written.
const WRITE_SIZE: usize = 64 * 1024;

/// Serves a client connection until it closes, idles out or the gateway shuts down.
pub(super) async fn serve<I>(plane: DataPlane, mut io: I, peer: Peer, shutdown: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max_head = plane.limits.max_header_bytes.max(8192);
    let head_timeout = plane.limits.head_timeout;
    let mut read = BytesMut::new();
    let mut out = Vec::new();
    let stop = shutdown.cancelled();
    // Ends an idle connection, or one whose request head is late.
    let timer = tokio::time::sleep(head_timeout);
    tokio::pin!(stop, timer);
    loop {
        // When the first bytes of the next request's head came.
        let mut head_began = false;
        // The next request: from what has been read, else from what the client sends next.
        let next = loop {
            match parse(&mut read) {
                Parsed::Request(next) => break next,
                Parsed::Partial if read.len() < max_head => {}
                _ => return hand_over(&plane, io, read.freeze(), peer, &shutdown).await,
            }
            let now = tokio::time::Instant::now();
            if read.is_empty() {
                // Idle: the timer may end up to a second early.
                if timer.deadline() + TIMER_SLACK < now + head_timeout {
                    timer.as_mut().reset(now + head_timeout);
                }
            } else if !head_began {
                // Part of a head: all of it is due within the timeout of its first bytes,
                // however slowly the rest comes (a client dripping a line every few seconds).
                head_began = true;
                timer.as_mut().reset(now + head_timeout);
            }
            read.reserve(READ_SIZE);
            tokio::select! {
                biased;
                n = io.read_buf(&mut read) => if !matches!(n, Ok(1..)) { return },
                () = &mut timer => return,
                () = &mut stop => return,
            }
        };
        // A client that hangs up while its request is handled ends the request (what it holds
        // is given back); what it sends meanwhile waits in `read`.
        let handled = plane.handle(next.request, peer, Some(next.arrived));
        tokio::pin!(handled);
        let response = loop {
            tokio::select! {
                biased;
                response = &mut handled => break response,
                n = read_more(&mut io, &mut read), if read.len() < max_head => {
                    if !matches!(n, Ok(1..)) { return }
                }
            }
        };
        match respond(&mut io, &mut out, response, &next.how).await {
            Ok(true) if !shutdown.is_cancelled() => {}
            Ok(_) => {
                let _ = io.shutdown().await;
                return;
            }
            Err(_) => return,
        }
    }
}

async fn read_more<I: AsyncRead + Unpin>(io: &mut I, read: &mut BytesMut) -> io::Result<usize> {
    read.reserve(1024);
    io.read_buf(read).await
}

/// Serves the rest of a connection with hyper's server (HTTP/1.1, or HTTP/2 by its preface),
/// `read` being what has already been read from it.
pub(super) async fn hand_over<I>(
    plane: &DataPlane,
    io: I,
    read: Bytes,
    peer: Peer,
    shutdown: &CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service_plane = plane.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let plane = service_plane.clone();
        let request = request.map(|body| body.map_err(BoxError::from).boxed());
        async move {
            let response = plane.handle(request, peer, None).await;
            Ok::<_, Infallible>(response.into_response())
        }
    });
    let io = TokioIo::new(Rewind { read, io });
    let connection = plane.hyper.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        () = shutdown.cancelled() => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// A request this path serves, and how its response is to be written.
struct Next {
    request: Request<Body>,
    /// The request's size as it arrived: head and body.
    arrived: u64,
    how: How,
}

struct How {
    /// `HEAD`: the response's head only.
    head_only: bool,
    /// An HTTP/1.0 client: no chunked bodies, and keep-alive only when asked for.
    http10: bool,
    keep_alive: bool,
}

// Moved once per request; a box would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Request(Next),
    /// The head is not all there yet.
    Partial,
    /// Not for this path: hyper's.
    Other,
}

/// The request at the start of `read`, which it is taken from (head and body).
fn parse(read: &mut BytesMut) -> Parsed {
    if read.is_empty() {
        return Parsed::Partial;
    }
    let mut lines = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let length = match parsed.parse_with_uninit_headers(read, &mut lines) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some(method), Some(path), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Parsed::Other;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Other;
    };
    let path_at = path.as_ptr() as usize - read.as_ptr() as usize;
    let path_at = path_at..path_at + path.len();
    let Some(fields) = RequestFields::of(parsed.headers, read) else {
        return Parsed::Other;
    };
    // A body to come, an interim answer or a protocol switch: hyper knows those.
    if fields.has_any(&[header::TRANSFER_ENCODING, header::EXPECT, header::UPGRADE]) {
        return Parsed::Other;
    }
    let (head, headers) = fields.split_off(read, length);
    // The target is checked before the body is taken, so nothing is lost when handed over.
    let uri = Uri::from_maybe_shared(head.slice(path_at));
    let body = headers
        .as_ref()
        .filter(|_| uri.is_ok())
        .and_then(|headers| match declared_length(headers) {
            Ok(None | Some(0)) => Some((empty(), 0)),
            Ok(Some(n)) if n <= read.len() as u64 => {
                Some((full(read.split_to(n as usize).freeze()), n))
            }
            _ => None, // still arriving, or not a length: hyper's
        });
    let (Some(headers), Some((body, body_length)), Ok(uri)) = (headers, body, uri) else {
        // Given back whole: hyper parses it again.
        let mut whole = BytesMut::from(&head[..]);
        whole.extend_from_slice(read);
        *read = whole;
        return Parsed::Other;
    };
    let http10 = minor == 0;
    let asked = |token: &[u8]| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|value| has_token(value.as_bytes(), token))
    };
    let keep_alive = match http10 {
        true => asked(b"keep-alive"),
        false => !asked(b"close"),
    };
    let head_only = method == Method::HEAD;
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *request.headers_mut() = headers;
    Parsed::Request(Next {
        request,
        arrived: length as u64 + body_length,
        how: How {
            head_only,
            http10,
            keep_alive,
        },
    })
}

/// How a response body goes on the wire.
enum Framing {
    None,
    Length(u64),
    Chunked,
    Close,
}

/// Writes `response` as `how` says; whether the connection can carry another request.
async fn respond<I>(
    io: &mut I,
    out: &mut Vec<u8>,
    response: Outgoing,
    how: &How,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
{
    let Outgoing {
        status,
        fields,
        mut body,
    } = response;
    let bodiless = how.head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Framing::None
    } else if let Ok(Some(length)) = declared_length(&fields.map) {
        Framing::Length(length)
    } else if let Some(length) = body.size_hint().exact() {
        Framing::Length(length)
    } else if how.http10 {
        Framing::Close
    } else {
        Framing::Chunked
    };

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let (mut connection, mut dated) = (None, false);
    fields.each(|name, value| {
        // The framing is this connection's own; a bodiless answer keeps its declared length.
        let is = |field: &[u8]| name.eq_ignore_ascii_case(field);
        if is(b"transfer-encoding") || (is(b"content-length") && !bodiless) {
            return;
        }
        if is(b"connection") {
            connection = Some(connection.unwrap_or(false) || has_token(value, b"close"));
        }
        dated |= is(b"date");
        put_header(out, name, value);
    });
    let keep_alive =
        how.keep_alive && connection != Some(true) && !matches!(framing, Framing::Close);
    match framing {
        Framing::Length(length) => {
            put_header(
                out,
                b"content-length",
                itoa::Buffer::new().format(length).as_bytes(),
            );
        }
        Framing::Chunked => put_header(out, b"transfer-encoding", b"chunked"),
        Framing::None | Framing::Close => {}
    }
    if connection.is_none() {
        match (keep_alive, how.http10) {
            (false, _) => put_header(out, b"connection", b"close"),
            (true, true) => put_header(out, b"connection", b"keep-alive"),
            (true, false) => {}
        }
    }
    if !dated {
        DATE.with_borrow_mut(|date| put_header(out, b"date", date.now()));
    }
    out.extend_from_slice(b"\r\n");

    let mut left = match framing {
        Framing::None => 0,
        Framing::Length(length) => length,
        Framing::Chunked | Framing::Close => u64::MAX,
    };
    let finished = loop {
        if left == 0 {
            break true;
        }
        // What the body has ready goes out with what is gathered; the wait for more, after it.
        let frame = std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Pending if !out.is_empty() => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
        })
        .await;
        let data = match frame {
            None => {
                io.write_all(out).await?;
                out.clear();
                continue;
            }
            Some(None) => break !matches!(framing, Framing::Length(_)),
            Some(Some(Err(_))) => break false,
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers are not sent
            },
        };
        if data.is_empty() {
            continue;
        }
        match framing {
            Framing::Chunked => {
                let mut size = [0u8; 16];
                out.extend_from_slice(hex(data.len(), &mut size));
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            }
            _ => {
                // A body longer than it declared is cut at its length.
                let n = (data.len() as u64).min(left);
                left -= n;
                out.extend_from_slice(&data[..n as usize]);
                if n < data.len() as u64 {
                    break false;
                }
            }
        }
        if out.len() >= WRITE_SIZE {
            io.write_all(out).await?;
            out.clear();
        }
    };
    if finished && matches!(framing, Framing::Chunked) {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    // The log phase runs as the body goes: before the answer is on the wire, as with hyper.
    drop(body);
    io.write_all(out).await?;
    io.flush().await?;
    out.clear();
    Ok(finished && keep_alive)
}

fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `n` in hexadecimal, written at the end of `buf`.
fn hex(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            return &buf[at..];
        }
    }
}

thread_local! {
    static DATE: RefCell<Date> = const { RefCell::new(Date { second: 0, text: String::new() }) };
}

/// The `Date` header's value, formatted once a second.
struct Date {
    second: u64,
    text: String,
}

impl Date {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second {
            self.second = second;
            self.text = httpdate::fmt_http_date(now);
        }
        self.text.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::fields::Fields;
    use crate::client::http1::Lines;
    use http::{HeaderMap, Response};

    fn parsed(bytes: &[u8]) -> (Parsed, BytesMut) {
        let mut read = BytesMut::from(bytes);
        (parse(&mut read), read)
    }

    #[test]
    fn simple_requests_are_taken_and_the_rest_left_whole_for_hyper() {
        let (Parsed::Request(next), rest) =
            parsed(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /next")
        else {
            panic!("a plain GET is this path's");
        };
        assert_eq!(next.request.uri(), "/a?b=1");
        assert_eq!(next.request.headers()["host"], "x");
        assert!(!next.how.keep_alive && !next.how.http10 && !next.how.head_only);
        assert_eq!(&rest[..], b"GET /next");

        let (Parsed::Request(next), rest) =
            parsed(b"POST / HTTP/1.0\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabcGET")
        else {
            panic!("a body already read is this path's");
        };
        assert!(next.how.keep_alive && next.how.http10);
        assert_eq!(next.request.body().size_hint().exact(), Some(3));
        assert_eq!(next.arrived, 65, "head and body, as they came");
        assert_eq!(&rest[..], b"GET");
        // A list of one length repeated is that length (RFC 9112 §6.3).
        let (Parsed::Request(next), _) =
            parsed(b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nab")
        else {
            panic!("one length, repeated");
        };
        assert_eq!(next.request.body().size_hint().exact(), Some(2));

        for other in [
            &b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\na",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n",
            b"G\x01T / HTTP/1.1\r\n\r\n",
            b"POST a/b HTTP/1.1\r\nContent-Length: 2\r\n\r\nab",
        ] {
            let (Parsed::Other, rest) = parsed(other) else {
                panic!("{:?} is hyper's", String::from_utf8_lossy(other));
            };
            assert_eq!(&rest[..], other, "handed over whole");
        }
        assert!(matches!(
            parsed(b"GET / HTTP/1.1\r\nHost:").0,
            Parsed::Partial
        ));
        assert!(matches!(parsed(b"PRI * HTT").0, Parsed::Partial));
    }

    async fn written(response: Response<Body>, request: &[u8]) -> (String, bool) {
        written_with(Outgoing::of(response), request).await
    }

    async fn written_with(response: Outgoing, request: &[u8]) -> (String, bool) {
        let Parsed::Request(next) = parse(&mut BytesMut::from(request)) else {
            panic!("not a request for this path");
        };
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        let keep = respond(&mut server, &mut Vec::new(), response, &next.how)
            .await
            .unwrap();
        drop(server);
        let mut text = String::new();
        client.read_to_string(&mut text).await.unwrap();
        (text, keep)
    }

    fn streamed(chunks: &[&'static str]) -> Body {
        let frames = chunks
            .iter()
            .map(|c| Ok::<_, BoxError>(hyper::body::Frame::data(Bytes::from_static(c.as_bytes()))));
        http_body_util::StreamBody::new(futures::stream::iter(frames.collect::<Vec<_>>())).boxed()
    }

    #[tokio::test]
    async fn responses_are_framed_for_the_client() {
        let get11 = b"GET / HTTP/1.1\r\n\r\n";
        let full = || full("hello");
        // A known length.
        let (text, keep) = written(Response::new(full()), get11).await;
        assert!(keep);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            text.contains("content-length: 5\r\n") && text.contains("\r\ndate: "),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\nhello"), "{text}");
        // Unknown: chunked to HTTP/1.1, to the close to HTTP/1.0.
        let (text, keep) = written(Response::new(streamed(&["ab", "cde"])), get11).await;
        assert!(keep);
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"),
            "{text}"
        );
        let (text, keep) = written(
            Response::new(streamed(&["ab", "cde"])),
            b"GET / HTTP/1.0\r\n\r\n",
        )
        .await;
        assert!(!keep);
        assert!(
            text.contains("connection: close\r\n") && !text.contains("chunked"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\nabcde"), "{text}");
        // HEAD and 304 keep their declared length and send no body.
        let mut head = Response::new(empty());
        head.headers_mut()
            .insert(header::CONTENT_LENGTH, "42".parse().unwrap());
        let (text, _) = written(head, b"HEAD / HTTP/1.1\r\n\r\n").await;
        assert!(
            text.contains("content-length: 42\r\n") && text.ends_with("\r\n\r\n"),
            "{text}"
        );
        let mut not_modified = Response::new(full());
        *not_modified.status_mut() = StatusCode::NOT_MODIFIED;
        let (text, _) = written(not_modified, get11).await;
        assert!(text.starts_with("HTTP/1.1 304 Not Modified\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n") && !text.contains("hello"),
            "{text}"
        );
        // A body shorter than it declared ends the connection; a longer one is cut.
        let mut short = Response::new(streamed(&["abc"]));
        short
            .headers_mut()
            .insert(header::CONTENT_LENGTH, "10".parse().unwrap());
        let (text, keep) = written(short, get11).await;
        assert!(!keep && text.ends_with("\r\n\r\nabc"), "{text}");
        let mut long = Response::new(streamed(&["abc", "def"]));
        long.headers_mut()
            .insert(header::CONTENT_LENGTH, "4".parse().unwrap());
        let (text, keep) = written(long, get11).await;
        assert!(!keep && text.ends_with("\r\n\r\nabcd"), "{text}");
        // The client's and the response's `Connection: close`; HTTP/1.0's keep-alive.
        let (_, keep) = written(
            Response::new(full()),
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(!keep);
        let mut closing = Response::new(full());
        closing
            .headers_mut()
            .insert(header::CONNECTION, "close".parse().unwrap());
        let (text, keep) = written(closing, get11).await;
        assert!(!keep && text.matches("connection").count() == 1, "{text}");
        let (text, keep) = written(
            Response::new(full()),
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        )
        .await;
        assert!(
            keep && text.contains("connection: keep-alive\r\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_nodes_lines_go_out_as_they_came_unless_the_gateway_set_the_field() {
        let lines = Lines::of_head(
            "HTTP/1.1 200 OK\r\nServer: up\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\n\
             X-RateLimit-Limit: 9\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n",
        );
        let response = Outgoing {
            status: StatusCode::OK,
            fields: Fields {
                set: vec![(
                    header::HeaderName::from_static("x-ratelimit-limit"),
                    "5".parse().unwrap(),
                )],
                map: HeaderMap::new(),
                lines,
            },
            body: full("hello"),
        };
        let (text, keep) = written_with(response, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(keep);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nx-ratelimit-limit: 5\r\nServer: up\r\n\
             Date: Tue, 01 Dec 2026 10:00:00 GMT\r\ncontent-length: 5\r\n\r\nhello"
        );
    }

    #[test]
    fn hex_sizes() {
        let mut buf = [0; 16];
        assert_eq!(hex(0, &mut buf), b"0");
        assert_eq!(hex(255, &mut buf), b"ff");
        assert_eq!(hex(0x10000, &mut buf), b"10000");
    }
}
