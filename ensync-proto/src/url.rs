//! Connection URL rules (PROTOCOL.md "Connection URL rules", the seed README).
//!
//! Pure functions from the URL a user gives to the endpoint an adapter dials.
//!
//! gRPC ([`parse_grpc_url`]):
//!
//! | URL | TLS | default port |
//! |---|---|---|
//! | `grpcs://host[:port]`, `https://host[:port]` | yes | 443 |
//! | `grpc://host[:port]`, `http://host[:port]` | no | 50051 |
//! | `localhost[:port]`, `127.0.0.1[:port]`, `[::1][:port]` (no scheme) | no | 50051 |
//! | any other `host[:port]` (no scheme) | yes | 443 |
//!
//! An explicit `:port` always wins. One trailing `/` is accepted; any other path, a
//! query, a fragment or user info is rejected. IPv6 literals are written in brackets
//! (`grpc://[::1]:50051`). Scheme and host are case-insensitive; the host is stored
//! lowercased.
//!
//! WebSocket ([`parse_ws_url`]): see its documentation.
//!
//! Several nodes ([`parse_grpc_urls`], [`parse_ws_urls`]): a client may be given several
//! node URLs, as several strings or as one string with the URLs separated by commas
//! (`grpc://a:50051,grpc://b:50051`; a comma always separates URLs). Each follows the
//! rules above; all of them use one transport: a WebSocket URL among gRPC ones (or the
//! reverse) is refused, and so is a mix of TLS and plaintext endpoints.

use std::fmt;
use std::net::Ipv6Addr;

/// The default port of a TLS gRPC endpoint (`grpcs://`).
pub const GRPC_TLS_PORT: u16 = 443;
/// The default port of a plaintext gRPC endpoint (`grpc://`, local hosts).
pub const GRPC_PLAINTEXT_PORT: u16 = 50051;
/// The default port of a plaintext WebSocket URL with an explicit `ws://` scheme.
pub const WS_PLAINTEXT_PORT: u16 = 80;
/// The default port of a TLS WebSocket URL (`wss://`).
pub const WS_TLS_PORT: u16 = 443;
/// The development WebSocket port of an EnSync node, used for a local host given
/// without scheme and port (`localhost` -> `ws://localhost:8082/message`).
pub const WS_LOCAL_DEV_PORT: u16 = 8082;
/// The path the WebSocket endpoint of a node listens on.
pub const WS_DEFAULT_PATH: &str = "/message";

/// A URL that the rules reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// The URL is empty (or only whitespace).
    #[error("the URL is empty")]
    Empty,
    /// The scheme is not one this transport accepts.
    #[error("unsupported URL scheme {scheme:?} (expected one of {expected})")]
    UnknownScheme {
        /// The scheme as written.
        scheme: String,
        /// The accepted schemes, for the message.
        expected: &'static str,
    },
    /// The URL has no host.
    #[error("the URL has no host")]
    EmptyHost,
    /// The host holds a character that cannot appear in a host name.
    #[error("invalid host {0:?}")]
    BadHost(String),
    /// The port is not a number in 1..=65535.
    #[error("invalid port {0:?} (expected a number in 1..=65535)")]
    BadPort(String),
    /// A path (other than a single trailing `/`), query or fragment on a gRPC URL.
    #[error("a gRPC URL takes no path, query or fragment (found {0:?})")]
    PathNotAllowed(String),
    /// A WebSocket path that is not a plain absolute path.
    #[error("invalid WebSocket path {0:?}")]
    BadPath(String),
    /// `user@` or `user:password@` in the URL.
    #[error("user info in the URL is not supported")]
    UserInfo,
    /// A URL of the other transport in a list of node URLs.
    #[error(
        "a {found} URL among {expected} URLs: all node URLs of one client use the same transport"
    )]
    MixedTransports {
        /// The transport this URL's scheme names.
        found: &'static str,
        /// The transport of the list.
        expected: &'static str,
    },
    /// TLS and plaintext endpoints in one list of node URLs.
    #[error(
        "TLS and plaintext node URLs mixed: all node URLs of one client use the same transport"
    )]
    MixedTls,
}

/// A list of node URLs that the rules reject: the URL at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad node URL {url:?}: {error}")]
pub struct UrlListError {
    /// The URL at fault (empty when the list holds none).
    pub url: String,
    /// What is wrong with it.
    #[source]
    pub error: UrlError,
}

/// Where a gRPC adapter connects: TLS or not, host and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Whether the connection uses TLS.
    pub tls: bool,
    /// The host name or IP address, lowercased; an IPv6 literal without its brackets.
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

impl Endpoint {
    /// `host:port` (`[v6]:port` for an IPv6 literal), as used in an HTTP/2 `:authority`.
    #[must_use]
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }

    /// `https://host:port` or `http://host:port`, the URI a tonic channel takes.
    #[must_use]
    pub fn uri(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.authority())
    }

    /// The same endpoint with TLS forced on or off (e.g. a `disable_tls` option).
    /// The port is kept.
    #[must_use]
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// Where a WebSocket adapter connects: TLS or not, host, port and request path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WsEndpoint {
    /// Whether the connection uses TLS (`wss://`).
    pub tls: bool,
    /// The host name or IP address, lowercased; an IPv6 literal without its brackets.
    pub host: String,
    /// The TCP port.
    pub port: u16,
    /// The request path, starting with `/` (`/message` unless the URL gave one).
    pub path: String,
}

impl WsEndpoint {
    /// `host:port` (`[v6]:port` for an IPv6 literal).
    #[must_use]
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }

    /// The full URL to dial, always with an explicit port:
    /// `ws://localhost:8082/message`, `wss://node.example:443/message`.
    #[must_use]
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{}", self.authority(), self.path)
    }

    /// The same endpoint with TLS forced on or off. The port is kept.
    #[must_use]
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }
}

impl fmt::Display for WsEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url())
    }
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Whether `host` (lowercased, IPv6 without brackets) is the local machine in the
/// sense of the URL rules: `localhost`, `127.0.0.1` or `::1`.
#[must_use]
pub fn is_local_host(host: &str) -> bool {
    host == "localhost"
        || host == "127.0.0.1"
        || host.parse::<Ipv6Addr>().is_ok_and(|a| a.is_loopback())
}

/// Parses a gRPC node URL by the rules in the [module docs](self).
///
/// ```
/// use ensync_proto::url::parse_grpc_url;
/// let e = parse_grpc_url("grpcs://node.gms.ensync.cloud").unwrap();
/// assert_eq!((e.tls, e.port), (true, 443));
/// assert_eq!(parse_grpc_url("localhost").unwrap().uri(), "http://localhost:50051");
/// ```
pub fn parse_grpc_url(url: &str) -> Result<Endpoint, UrlError> {
    let url = url.trim();
    if url.is_empty() {
        return Err(UrlError::Empty);
    }
    let (scheme, rest) = split_scheme(url);
    let tls = match scheme.map(str::to_ascii_lowercase).as_deref() {
        Some("grpcs" | "https") => Some(true),
        Some("grpc" | "http") => Some(false),
        Some(_) => {
            return Err(UrlError::UnknownScheme {
                scheme: scheme.unwrap_or_default().to_owned(),
                expected: "grpc://, grpcs://, http://, https:// or none",
            });
        }
        None => None,
    };
    let (authority, path) = split_path(rest);
    if !(path.is_empty() || path == "/") {
        return Err(UrlError::PathNotAllowed(path.to_owned()));
    }
    let (host, port) = parse_authority(authority)?;
    let tls = tls.unwrap_or_else(|| !is_local_host(&host));
    let port = port.unwrap_or(if tls {
        GRPC_TLS_PORT
    } else {
        GRPC_PLAINTEXT_PORT
    });
    Ok(Endpoint { tls, host, port })
}

/// Parses a WebSocket node URL.
///
/// - `wss://` (or `https://`) is TLS, `ws://` (or `http://`) plaintext, as the published
///   client does by replacing `http` with `ws`;
/// - with an explicit scheme and no port, the standard WebSocket ports apply:
///   `ws` 80, `wss` 443 (the published client leaves the port to its WebSocket library,
///   which does the same);
/// - with no scheme, the gRPC rule carries over: `localhost` / `127.0.0.1` / `[::1]`
///   mean plaintext on the node's development WebSocket port 8082, any other host
///   `wss` on 443 (our choice; the published client requires a scheme);
/// - an explicit `:port` always wins;
/// - the path `/message` is used when the URL has no path (or only `/`); a path that is
///   given is kept as written (a query string is kept with it), a fragment is rejected.
///
/// ```
/// use ensync_proto::url::parse_ws_url;
/// assert_eq!(parse_ws_url("ws://localhost:8082").unwrap().url(), "ws://localhost:8082/message");
/// assert_eq!(parse_ws_url("https://node.example").unwrap().url(), "wss://node.example:443/message");
/// assert_eq!(parse_ws_url("localhost").unwrap().url(), "ws://localhost:8082/message");
/// ```
pub fn parse_ws_url(url: &str) -> Result<WsEndpoint, UrlError> {
    let url = url.trim();
    if url.is_empty() {
        return Err(UrlError::Empty);
    }
    let (scheme, rest) = split_scheme(url);
    let tls = match scheme.map(str::to_ascii_lowercase).as_deref() {
        Some("wss" | "https") => Some(true),
        Some("ws" | "http") => Some(false),
        Some(_) => {
            return Err(UrlError::UnknownScheme {
                scheme: scheme.unwrap_or_default().to_owned(),
                expected: "ws://, wss://, http://, https:// or none",
            });
        }
        None => None,
    };
    let (authority, path) = split_path(rest);
    let (host, port) = parse_authority(authority)?;
    let (tls, default_port) = match tls {
        Some(true) => (true, WS_TLS_PORT),
        Some(false) => (false, WS_PLAINTEXT_PORT),
        None if is_local_host(&host) => (false, WS_LOCAL_DEV_PORT),
        None => (true, WS_TLS_PORT),
    };
    let path = if path.is_empty() || path == "/" {
        WS_DEFAULT_PATH.to_owned()
    } else if path.starts_with('/')
        && !path.contains('#')
        && !path.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        path.to_owned()
    } else {
        return Err(UrlError::BadPath(path.to_owned()));
    };
    Ok(WsEndpoint {
        tls,
        host,
        port: port.unwrap_or(default_port),
        path,
    })
}

/// The URLs of a list: every string of `urls` split at its commas, each trimmed.
fn url_list<'a>(urls: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    urls.into_iter()
        .flat_map(|u| u.split(','))
        .map(str::trim)
        .collect()
}

/// Which transport a URL's scheme names, if it names one (`http`/`https` and no scheme
/// fit both).
fn scheme_transport(url: &str) -> Option<&'static str> {
    match split_scheme(url).0.map(str::to_ascii_lowercase).as_deref() {
        Some("grpc" | "grpcs") => Some(GRPC),
        Some("ws" | "wss") => Some(WEBSOCKET),
        _ => None,
    }
}

const GRPC: &str = "gRPC";
const WEBSOCKET: &str = "WebSocket";

/// Parses a list of node URLs of one transport (`expected`) with `parse`, forcing
/// plaintext if `disable_tls`, and checks they all use the same transport.
fn parse_list<'a, E>(
    urls: impl IntoIterator<Item = &'a str>,
    expected: &'static str,
    parse: impl Fn(&str) -> Result<E, UrlError>,
    tls: impl Fn(&E) -> bool,
    plaintext: impl Fn(E) -> E,
    disable_tls: bool,
) -> Result<Vec<E>, UrlListError> {
    let urls = url_list(urls);
    let fail = |url: &str, error| UrlListError {
        url: url.to_owned(),
        error,
    };
    // A URL of the other transport among URLs of this one (a list made only of the other
    // transport's URLs is refused by `parse`, for its scheme).
    let other = |u: &str| scheme_transport(u).is_some_and(|t| t != expected);
    if !urls.iter().all(|u| other(u)) {
        if let Some(url) = urls.iter().find(|u| other(u)) {
            let found = scheme_transport(url).unwrap_or(expected);
            return Err(fail(url, UrlError::MixedTransports { found, expected }));
        }
    }
    let mut endpoints: Vec<E> = Vec::with_capacity(urls.len());
    for url in &urls {
        let endpoint = parse(url).map_err(|e| fail(url, e))?;
        let endpoint = if disable_tls {
            plaintext(endpoint)
        } else {
            endpoint
        };
        if let Some(first) = endpoints.first() {
            if tls(first) != tls(&endpoint) {
                return Err(fail(url, UrlError::MixedTls));
            }
        }
        endpoints.push(endpoint);
    }
    if endpoints.is_empty() {
        return Err(fail("", UrlError::Empty));
    }
    Ok(endpoints)
}

/// Parses the gRPC node URLs of one client (see [Several nodes](self)): each string may
/// hold several URLs separated by commas; `disable_tls` forces plaintext on every
/// endpoint (before the check that TLS is not mixed with plaintext).
///
/// ```
/// use ensync_proto::url::{UrlError, parse_grpc_urls};
/// let nodes = parse_grpc_urls(["grpc://a:1, grpc://b:2"], false).unwrap();
/// assert_eq!(nodes.iter().map(|e| e.authority()).collect::<Vec<_>>(), ["a:1", "b:2"]);
/// let mixed = parse_grpc_urls(["grpc://a:1", "ws://b:2"], false).unwrap_err();
/// assert!(matches!(mixed.error, UrlError::MixedTransports { .. }));
/// ```
pub fn parse_grpc_urls<'a>(
    urls: impl IntoIterator<Item = &'a str>,
    disable_tls: bool,
) -> Result<Vec<Endpoint>, UrlListError> {
    parse_list(
        urls,
        GRPC,
        parse_grpc_url,
        |e| e.tls,
        |e| e.with_tls(false),
        disable_tls,
    )
}

/// Parses the WebSocket node URLs of one client, like [`parse_grpc_urls`] with the
/// rules of [`parse_ws_url`].
pub fn parse_ws_urls<'a>(
    urls: impl IntoIterator<Item = &'a str>,
    disable_tls: bool,
) -> Result<Vec<WsEndpoint>, UrlListError> {
    parse_list(
        urls,
        WEBSOCKET,
        parse_ws_url,
        |e| e.tls,
        |e| e.with_tls(false),
        disable_tls,
    )
}

/// Splits `scheme://rest`; `None` when there is no `://` before any `/`.
fn split_scheme(url: &str) -> (Option<&str>, &str) {
    match url.find("://") {
        Some(i) if !url[..i].contains('/') => (Some(&url[..i]), &url[i + 3..]),
        _ => (None, url),
    }
}

/// Splits `authority` from the rest (path, query or fragment, with its leading char).
fn split_path(rest: &str) -> (&str, &str) {
    match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    }
}

/// Parses `host[:port]` / `[v6][:port]` into a lowercased host and an optional port.
fn parse_authority(authority: &str) -> Result<(String, Option<u16>), UrlError> {
    if authority.contains('@') {
        return Err(UrlError::UserInfo);
    }
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let Some(close) = inner.find(']') else {
            return Err(UrlError::BadHost(authority.to_owned()));
        };
        let host = &inner[..close];
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(UrlError::BadHost(authority.to_owned()));
        }
        let after = &inner[close + 1..];
        let port = if after.is_empty() {
            None
        } else if let Some(p) = after.strip_prefix(':') {
            Some(p)
        } else {
            return Err(UrlError::BadHost(authority.to_owned()));
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => {
                if p.contains(':') {
                    // An IPv6 literal without brackets, or a stray colon.
                    return Err(UrlError::BadHost(authority.to_owned()));
                }
                (h, Some(p))
            }
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(UrlError::EmptyHost);
    }
    let is_v6 = host.contains(':');
    if !is_v6
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(UrlError::BadHost(host.to_owned()));
    }
    let port = match port {
        None => None,
        Some(p) => Some(parse_port(p)?),
    };
    Ok((host.to_ascii_lowercase(), port))
}

fn parse_port(p: &str) -> Result<u16, UrlError> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UrlError::BadPort(p.to_owned()));
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(UrlError::BadPort(p.to_owned())),
        Ok(port) => Ok(port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc(url: &str) -> (bool, String, u16) {
        let e = parse_grpc_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        (e.tls, e.host, e.port)
    }

    fn t(tls: bool, host: &str, port: u16) -> (bool, String, u16) {
        (tls, host.to_owned(), port)
    }

    #[test]
    fn grpcs_is_tls_default_443() {
        assert_eq!(
            grpc("grpcs://node.gms.ensync.cloud"),
            t(true, "node.gms.ensync.cloud", 443)
        );
        assert_eq!(grpc("grpcs://localhost"), t(true, "localhost", 443));
    }

    #[test]
    fn grpc_is_plaintext_default_50051() {
        assert_eq!(grpc("grpc://node.example"), t(false, "node.example", 50051));
        assert_eq!(grpc("grpc://localhost"), t(false, "localhost", 50051));
    }

    #[test]
    fn no_scheme_local_hosts_are_plaintext_50051() {
        assert_eq!(grpc("localhost"), t(false, "localhost", 50051));
        assert_eq!(grpc("127.0.0.1"), t(false, "127.0.0.1", 50051));
        assert_eq!(grpc("[::1]"), t(false, "::1", 50051));
        assert_eq!(grpc("LocalHost"), t(false, "localhost", 50051));
    }

    #[test]
    fn no_scheme_other_hosts_are_tls_443() {
        assert_eq!(
            grpc("node.gms.ensync.cloud"),
            t(true, "node.gms.ensync.cloud", 443)
        );
        assert_eq!(grpc("10.0.0.7"), t(true, "10.0.0.7", 443));
        assert_eq!(grpc("[2001:db8::1]"), t(true, "2001:db8::1", 443));
        // Substring matches do not count as local (unlike the Python client's `in` test).
        assert_eq!(
            grpc("localhost.example.com"),
            t(true, "localhost.example.com", 443)
        );
    }

    #[test]
    fn explicit_port_always_wins() {
        assert_eq!(
            grpc("grpcs://node.example:8443"),
            t(true, "node.example", 8443)
        );
        assert_eq!(
            grpc("grpc://node.example:1234"),
            t(false, "node.example", 1234)
        );
        assert_eq!(grpc("localhost:9000"), t(false, "localhost", 9000));
        assert_eq!(grpc("node.example:50051"), t(true, "node.example", 50051));
        assert_eq!(grpc("grpc://[::1]:7000"), t(false, "::1", 7000));
    }

    #[test]
    fn http_schemes_are_accepted_leniently() {
        assert_eq!(grpc("http://node.example"), t(false, "node.example", 50051));
        assert_eq!(grpc("https://node.example"), t(true, "node.example", 443));
        assert_eq!(
            grpc("HTTPS://Node.Example:444"),
            t(true, "node.example", 444)
        );
    }

    #[test]
    fn trailing_slash_and_whitespace_are_accepted() {
        assert_eq!(
            grpc("grpc://localhost:50051/"),
            t(false, "localhost", 50051)
        );
        assert_eq!(grpc("  localhost/ "), t(false, "localhost", 50051));
    }

    #[test]
    fn grpc_rejections() {
        assert_eq!(parse_grpc_url(""), Err(UrlError::Empty));
        assert_eq!(parse_grpc_url("   "), Err(UrlError::Empty));
        assert_eq!(parse_grpc_url("grpc://"), Err(UrlError::EmptyHost));
        assert_eq!(parse_grpc_url("grpc://:50051"), Err(UrlError::EmptyHost));
        assert_eq!(
            parse_grpc_url("grpc://[]:1"),
            Err(UrlError::BadHost("[]:1".into()))
        );
        for bad in [
            "localhost:",
            "localhost:0",
            "localhost:65536",
            "localhost:-1",
            "h:12a",
        ] {
            assert!(
                matches!(parse_grpc_url(bad), Err(UrlError::BadPort(_))),
                "{bad} -> {:?}",
                parse_grpc_url(bad)
            );
        }
        assert_eq!(
            parse_grpc_url("grpc://localhost/api"),
            Err(UrlError::PathNotAllowed("/api".into()))
        );
        assert_eq!(
            parse_grpc_url("grpc://localhost?x=1"),
            Err(UrlError::PathNotAllowed("?x=1".into()))
        );
        assert_eq!(
            parse_grpc_url("grpc://localhost//"),
            Err(UrlError::PathNotAllowed("//".into()))
        );
        assert!(matches!(
            parse_grpc_url("ws://localhost"),
            Err(UrlError::UnknownScheme { scheme, .. }) if scheme == "ws"
        ));
        assert!(matches!(
            parse_grpc_url("ftp://x"),
            Err(UrlError::UnknownScheme { .. })
        ));
        assert_eq!(
            parse_grpc_url("grpc://user:pw@host"),
            Err(UrlError::UserInfo)
        );
        assert!(matches!(
            parse_grpc_url("grpc://::1"),
            Err(UrlError::BadHost(_))
        ));
        assert!(matches!(
            parse_grpc_url("grpc://[::1"),
            Err(UrlError::BadHost(_))
        ));
        assert!(matches!(
            parse_grpc_url("grpc://[::1]x"),
            Err(UrlError::BadHost(_))
        ));
        assert!(matches!(
            parse_grpc_url("grpc://[nothex]"),
            Err(UrlError::BadHost(_))
        ));
        assert!(matches!(
            parse_grpc_url("grpc://bad host"),
            Err(UrlError::BadHost(_))
        ));
        assert!(matches!(
            parse_grpc_url("grpc://a;b"),
            Err(UrlError::BadHost(_))
        ));
    }

    #[test]
    fn endpoint_authority_uri_and_with_tls() {
        let e = parse_grpc_url("grpcs://node.example").unwrap();
        assert_eq!(e.authority(), "node.example:443");
        assert_eq!(e.uri(), "https://node.example:443");
        assert_eq!(e.to_string(), "https://node.example:443");
        let plain = e.with_tls(false);
        assert_eq!(plain.uri(), "http://node.example:443");
        let v6 = parse_grpc_url("[::1]").unwrap();
        assert_eq!(v6.authority(), "[::1]:50051");
        assert_eq!(v6.uri(), "http://[::1]:50051");
        assert_eq!(v6.with_tls(true).uri(), "https://[::1]:50051");
    }

    fn ws(url: &str) -> String {
        parse_ws_url(url)
            .unwrap_or_else(|e| panic!("{url}: {e}"))
            .url()
    }

    #[test]
    fn ws_appends_message_path() {
        assert_eq!(ws("ws://localhost:8082"), "ws://localhost:8082/message");
        assert_eq!(ws("ws://localhost:8082/"), "ws://localhost:8082/message");
        assert_eq!(
            ws("wss://node.gms.ensync.cloud"),
            "wss://node.gms.ensync.cloud:443/message"
        );
    }

    #[test]
    fn ws_keeps_a_given_path() {
        assert_eq!(
            ws("ws://localhost:8082/message"),
            "ws://localhost:8082/message"
        );
        assert_eq!(
            ws("wss://h.example/ensync/ws?v=1"),
            "wss://h.example:443/ensync/ws?v=1"
        );
        assert_eq!(parse_ws_url("ws://h/a/b").unwrap().path, "/a/b");
    }

    #[test]
    fn ws_http_schemes_map_like_the_published_client() {
        assert_eq!(ws("http://localhost:8082"), "ws://localhost:8082/message");
        assert_eq!(ws("https://node.example"), "wss://node.example:443/message");
    }

    #[test]
    fn ws_default_ports() {
        // Explicit scheme: standard WebSocket ports, even for local hosts.
        assert_eq!(ws("ws://node.example"), "ws://node.example:80/message");
        assert_eq!(ws("ws://localhost"), "ws://localhost:80/message");
        assert_eq!(ws("wss://localhost"), "wss://localhost:443/message");
        // No scheme: local hosts use the node's development port, others wss on 443.
        assert_eq!(ws("localhost"), "ws://localhost:8082/message");
        assert_eq!(ws("127.0.0.1"), "ws://127.0.0.1:8082/message");
        assert_eq!(ws("[::1]"), "ws://[::1]:8082/message");
        assert_eq!(ws("node.example"), "wss://node.example:443/message");
        // An explicit port always wins.
        assert_eq!(ws("localhost:9001"), "ws://localhost:9001/message");
        assert_eq!(ws("node.example:9443"), "wss://node.example:9443/message");
        assert_eq!(
            ws("ws://node.example:8082"),
            "ws://node.example:8082/message"
        );
    }

    #[test]
    fn ws_rejections() {
        assert_eq!(parse_ws_url(""), Err(UrlError::Empty));
        assert!(matches!(
            parse_ws_url("grpc://localhost"),
            Err(UrlError::UnknownScheme { .. })
        ));
        assert_eq!(parse_ws_url("ws://"), Err(UrlError::EmptyHost));
        assert!(matches!(
            parse_ws_url("ws://h:99999"),
            Err(UrlError::BadPort(_))
        ));
        assert!(matches!(
            parse_ws_url("ws://h/a#frag"),
            Err(UrlError::BadPath(_))
        ));
        assert!(matches!(
            parse_ws_url("ws://h?x=1"),
            Err(UrlError::BadPath(_))
        ));
        assert!(matches!(
            parse_ws_url("ws://h/a b"),
            Err(UrlError::BadPath(_))
        ));
        assert_eq!(parse_ws_url("wss://u@h"), Err(UrlError::UserInfo));
    }

    #[test]
    fn ws_endpoint_with_tls_keeps_port_and_path() {
        let e = parse_ws_url("ws://h.example:8082/x")
            .unwrap()
            .with_tls(true);
        assert_eq!(e.url(), "wss://h.example:8082/x");
        assert_eq!(e.authority(), "h.example:8082");
    }

    fn authorities(list: &[Endpoint]) -> Vec<String> {
        list.iter().map(Endpoint::authority).collect()
    }

    #[test]
    fn url_lists_split_at_commas_and_keep_their_order() {
        let one = parse_grpc_urls(["grpc://localhost:1"], false).unwrap();
        assert_eq!(authorities(&one), ["localhost:1"]);
        let list = parse_grpc_urls(["grpc://b:2 , grpc://a:1", "grpc://c:3"], false).unwrap();
        assert_eq!(authorities(&list), ["b:2", "a:1", "c:3"]);
        // Each URL follows the single-URL rules (local host without scheme: plaintext).
        let local = parse_grpc_urls(["localhost,127.0.0.1:9"], false).unwrap();
        assert_eq!(authorities(&local), ["localhost:50051", "127.0.0.1:9"]);
        let ws = parse_ws_urls(["ws://a:1/x,ws://b:2"], false).unwrap();
        assert_eq!(
            ws.iter().map(WsEndpoint::url).collect::<Vec<_>>(),
            ["ws://a:1/x", "ws://b:2/message"]
        );
    }

    #[test]
    fn url_lists_name_the_url_at_fault() {
        let e = parse_grpc_urls(["grpc://a:1,grpc://b:0"], false).unwrap_err();
        assert_eq!(e.url, "grpc://b:0");
        assert_eq!(e.error, UrlError::BadPort("0".into()));
        assert_eq!(
            e.to_string(),
            "bad node URL \"grpc://b:0\": invalid port \"0\" (expected a number in 1..=65535)"
        );
        let e = parse_grpc_urls(["grpc://a:1,,grpc://b:2"], false).unwrap_err();
        assert_eq!((e.url.as_str(), e.error), ("", UrlError::Empty));
        let e = parse_grpc_urls(std::iter::empty(), false).unwrap_err();
        assert_eq!(e.error, UrlError::Empty);
        // One URL: the single-URL error, unchanged.
        let e = parse_grpc_urls(["ws://localhost"], false).unwrap_err();
        assert!(matches!(e.error, UrlError::UnknownScheme { .. }), "{e}");
    }

    #[test]
    fn url_lists_refuse_a_mix_of_transports() {
        let e = parse_grpc_urls(["grpc://a:1", "wss://b"], false).unwrap_err();
        assert_eq!(e.url, "wss://b");
        assert_eq!(
            e.error,
            UrlError::MixedTransports {
                found: "WebSocket",
                expected: "gRPC"
            }
        );
        assert!(e.to_string().contains("same transport"), "{e}");
        let e = parse_ws_urls(["localhost:8082,grpc://b:1"], false).unwrap_err();
        assert_eq!(
            e.error,
            UrlError::MixedTransports {
                found: "gRPC",
                expected: "WebSocket"
            }
        );
        // Only URLs of the other transport: the scheme is what is wrong.
        let e = parse_grpc_urls(["ws://a,ws://b"], false).unwrap_err();
        assert!(matches!(e.error, UrlError::UnknownScheme { .. }), "{e}");
    }

    #[test]
    fn url_lists_refuse_a_mix_of_tls_and_plaintext() {
        let e = parse_grpc_urls(["grpcs://a,grpc://b"], false).unwrap_err();
        assert_eq!((e.url.as_str(), e.error), ("grpc://b", UrlError::MixedTls));
        // No scheme: local hosts are plaintext, others TLS.
        let e = parse_grpc_urls(["localhost,node.example"], false).unwrap_err();
        assert_eq!(e.error, UrlError::MixedTls);
        let e = parse_ws_urls(["wss://a,ws://b"], false).unwrap_err();
        assert_eq!(e.error, UrlError::MixedTls);
        // Forcing plaintext makes them one kind, ports kept.
        let plain = parse_grpc_urls(["grpcs://a,grpc://b"], true).unwrap();
        assert!(plain.iter().all(|e| !e.tls));
        assert_eq!(authorities(&plain), ["a:443", "b:50051"]);
    }
}
