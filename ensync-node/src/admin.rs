//! The admin HTTP endpoint (`admin_listen`): the REST API of EnSync's config manager as
//! the published EnSync CLI calls it (base `/api/v1/ensync`), over
//! [`NodeService`]'s administrative methods, plus `/healthz` and `/readyz`.
//!
//! Every API request carries `X-ACCESS-KEY: <admin_key>` (header names are
//! case-insensitive); a missing or wrong key is 401 and changes nothing. Status codes
//! follow what the CLI expects: 400 for bad input (unreadable JSON included), 404 for an
//! unknown id, key or name, 401 for the admin key, 503 only when the store cannot take
//! the change; never a 5xx for a client's mistake. Timestamps are RFC 3339 strings;
//! unknown request fields are ignored.
//!
//! HTTPS: with [`AdminOptions::tls`] (the node's `tls_cert`/`tls_key`, unless
//! `admin_tls = false`; see [`crate::config::NodeConfig::admin_tls`]) every connection
//! is TLS; a TLS handshake must complete within [`AdminOptions::handshake_timeout`], and
//! at most [`MAX_TLS_HANDSHAKES`] are in progress at once (further connections are closed
//! unanswered until one ends).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::SecretString;
use crate::registry::KeyType;
use crate::service::{AccessKeyInfo, AdminError, EventDefinition, NodeService};

#[derive(Clone)]
struct Admin {
    service: NodeService,
    key: SecretString,
}

/// Most TLS handshakes of the admin endpoint in progress at once.
pub const MAX_TLS_HANDSHAKES: usize = 64;

/// How the admin endpoint serves: plain HTTP, or HTTPS.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    /// Serve HTTPS with this configuration (the node's certificate); plain HTTP when
    /// `None` (the default).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// A TLS handshake must complete within it, or the connection is closed (the node's
    /// `handshake_timeout_ms`).
    pub handshake_timeout: Duration,
}

impl Default for AdminOptions {
    fn default() -> Self {
        Self {
            tls: None,
            handshake_timeout: Duration::from_millis(crate::config::DEFAULT_HANDSHAKE_TIMEOUT_MS),
        }
    }
}

/// The admin endpoint, serving until dropped or shut down.
pub struct AdminEndpoint {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Whether it serves HTTPS.
    pub tls: bool,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for AdminEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminEndpoint")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl AdminEndpoint {
    /// Binds `addr` and serves the admin API for `service` over plain HTTP,
    /// authenticated by `key`.
    pub async fn start(
        addr: SocketAddr,
        key: SecretString,
        service: NodeService,
    ) -> Result<Self, crate::NodeError> {
        Self::start_with(addr, key, AdminOptions::default(), service).await
    }

    /// Binds `addr` and serves the admin API for `service` as `options` say (HTTPS when
    /// [`AdminOptions::tls`] is set), authenticated by `key`.
    pub async fn start_with(
        addr: SocketAddr,
        key: SecretString,
        options: AdminOptions,
        service: NodeService,
    ) -> Result<Self, crate::NodeError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| crate::NodeError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|e| crate::NodeError::Io(e.to_string()))?;
        let app = router(Admin { service, key });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let tls = options.tls.is_some();
        let task = match options.tls {
            None => tokio::spawn(serve(listener, app, stopped)),
            Some(config) => {
                let listener = TlsListener::new(listener, config, options.handshake_timeout);
                tokio::spawn(serve(listener, app, stopped))
            }
        };
        let scheme = if tls { "https" } else { "http" };
        tracing::info!(%addr, scheme, "admin endpoint listening");
        Ok(Self {
            addr,
            tls,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Stops serving and waits for open requests to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for AdminEndpoint {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve<L>(listener: L, app: Router, stopped: tokio::sync::oneshot::Receiver<()>)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let served = axum::serve(listener, app).with_graceful_shutdown(async {
        let _ = stopped.await;
    });
    if let Err(e) = served.await {
        tracing::error!(error = %e, "admin endpoint failed");
    }
}

type TlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// The admin endpoint's listener over TLS: a task accepts TCP connections and runs each
/// TLS handshake in a task of its own (bounded by [`MAX_TLS_HANDSHAKES`] and the
/// handshake timeout), so a slow or silent client never holds up the others; the
/// connections whose handshake completed are handed to the HTTP server.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream, SocketAddr)>,
    addr: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    fn new(
        listener: tokio::net::TcpListener,
        config: Arc<rustls::ServerConfig>,
        handshake: Duration,
    ) -> Self {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, ready) = tokio::sync::mpsc::channel(16);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let accepting = tokio::spawn(accept_tls(listener, acceptor, handshake, tx));
        Self {
            ready,
            addr,
            accepting,
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task is gone (it ends only with the listener): nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

async fn accept_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handshake: Duration,
    ready: tokio::sync::mpsc::Sender<(TlsStream, SocketAddr)>,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_TLS_HANDSHAKES));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "admin endpoint: {MAX_TLS_HANDSHAKES} TLS handshakes in progress; connection closed");
            continue;
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let accepted = tokio::time::timeout(handshake, acceptor.accept(tcp)).await;
            drop(permit);
            match accepted {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "admin TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
            }
        });
    }
}

fn router(admin: Admin) -> Router {
    let api = Router::new()
        .route("/ping", get(|| async { StatusCode::OK }))
        .route("/access-key", get(list_keys).post(create_key))
        .route("/access-key/{id}", get(get_key).delete(delete_key))
        .route(
            "/access-key/{key}/permissions",
            get(get_permissions).post(set_permissions),
        )
        .route("/access/service-key-pair", put(rotate))
        .route("/event", get(list_events).post(create_event))
        .route("/event/{id}", get(get_event).put(update_event))
        .route(
            "/workspace",
            get(|| async { axum::Json(json!({"resultsLength": 0, "results": []})) })
                .post(|| async { StatusCode::NO_CONTENT }),
        )
        .layer(middleware::from_fn_with_state(admin.clone(), authenticate));
    Router::new()
        .nest("/api/v1/ensync", api)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(admin)
}

async fn authenticate(State(admin): State<Admin>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get("x-access-key")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !crate::registry::ct_eq(given, admin.key.expose().as_bytes()) {
        tracing::warn!(path = %req.uri().path(), "admin request refused: missing or wrong X-ACCESS-KEY");
        return error(StatusCode::UNAUTHORIZED, "missing or wrong X-ACCESS-KEY");
    }
    next.run(req).await
}

async fn ready(State(admin): State<Admin>) -> Response {
    match admin.service.ready().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn metrics(State(admin): State<Admin>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        admin.service.metrics_text(),
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": message, "message": message})),
    )
        .into_response()
}

fn admin_error(e: AdminError) -> Response {
    let status = match e {
        AdminError::Invalid(_) => StatusCode::BAD_REQUEST,
        AdminError::NotFound(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, &e.to_string())
}

/// The JSON body, or 400 (not axum's 415/422: the CLI reads < 400 as success and the
/// rest as the message).
fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, Box<Response>> {
    let text = if bytes.is_empty() { &b"{}"[..] } else { bytes };
    serde_json::from_slice(text).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            &format!("invalid JSON body: {e}"),
        ))
    })
}

fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn key_view(k: &AccessKeyInfo) -> Value {
    json!({
        "id": k.id,
        "key": k.access_key,
        "accessKey": k.access_key,
        "name": k.name,
        "type": k.kind,
        "createdAt": rfc3339(k.created_ms),
        "permissions": {"send": k.send, "receive": k.receive},
        "service_key_pair": {"public_key": k.public_key},
    })
}

fn event_view(e: &EventDefinition) -> Value {
    json!({
        "id": e.id,
        "name": e.name,
        "payload": e.payload,
        "createdAt": rfc3339(e.created_ms),
        "updatedAt": rfc3339(e.updated_ms),
    })
}

/// `limit`, `pageIndex`, `order`, `orderBy` of the list calls (defaults: 20, 0, DESC).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Page {
    limit: Option<String>,
    page_index: Option<String>,
    order: Option<String>,
    order_by: Option<String>,
    access_key: Option<String>,
    name: Option<String>,
}

impl Page {
    fn numbers(&self) -> Result<(usize, usize), Box<Response>> {
        let num = |v: &Option<String>, default: usize, what: &str| match v.as_deref() {
            None | Some("") => Ok(default),
            Some(t) => t.parse::<usize>().map_err(|_| {
                Box::new(error(
                    StatusCode::BAD_REQUEST,
                    &format!("{what} must be a non-negative integer, not {t:?}"),
                ))
            }),
        };
        let limit = num(&self.limit, 20, "limit")?.clamp(1, 1000);
        Ok((limit, num(&self.page_index, 0, "pageIndex")?))
    }

    fn descending(&self) -> Result<bool, Box<Response>> {
        match self
            .order
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("") | Some("DESC") => Ok(true),
            Some("ASC") => Ok(false),
            Some(other) => Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                &format!("order must be ASC or DESC, not {other:?}"),
            ))),
        }
    }
}

fn page<T>(
    mut items: Vec<T>,
    p: &Page,
    f: impl Fn(&T) -> Value,
) -> Result<Response, Box<Response>> {
    let (limit, index) = p.numbers()?;
    if p.descending()? {
        items.reverse();
    }
    let total = items.len();
    let results: Vec<Value> = items
        .iter()
        .skip(index * limit)
        .take(limit)
        .map(f)
        .collect();
    Ok(axum::Json(json!({"resultsLength": total, "results": results})).into_response())
}

async fn list_keys(State(a): State<Admin>, Query(p): Query<Page>) -> Response {
    let mut keys = a.service.admin_keys();
    if let Some(k) = p.access_key.as_deref().filter(|k| !k.is_empty()) {
        keys.retain(|x| x.access_key == k);
    }
    if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
        keys.retain(|x| x.name == n);
    }
    match p.order_by.as_deref() {
        Some("key") | Some("accessKey") => keys.sort_by(|x, y| x.access_key.cmp(&y.access_key)),
        Some("name") => keys.sort_by(|x, y| x.name.cmp(&y.name)),
        _ => keys.sort_by_key(|x| x.created_ms),
    }
    page(keys, &p, key_view).unwrap_or_else(|e| *e)
}

#[derive(Deserialize)]
struct Permissions {
    #[serde(default)]
    send: Option<Vec<String>>,
    #[serde(default)]
    receive: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct CreateKey {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    permissions: Option<Permissions>,
}

async fn create_key(State(a): State<Admin>, bytes: Bytes) -> Response {
    let req: CreateKey = match body(&bytes) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    let kind = match req.kind.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("") | Some("SERVICE") => KeyType::Service,
        Some("ACCOUNT") => KeyType::Account,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("type must be SERVICE or ACCOUNT, not {other:?}"),
            );
        }
    };
    let Some(name) = req.name.filter(|n| !n.trim().is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "name is required");
    };
    let (send, receive) = match req.permissions {
        Some(p) => (p.send.unwrap_or_default(), p.receive.unwrap_or_default()),
        None => (Vec::new(), Vec::new()),
    };
    match a.service.admin_create_key(kind, &name, send, receive).await {
        Ok((k, pair)) => {
            let mut view = key_view(&k);
            view["service_key_pair"] = json!({
                "public_key": pair.public_key,
                "private_key": pair.secret_key.as_str(),
            });
            (StatusCode::CREATED, axum::Json(view)).into_response()
        }
        Err(e) => admin_error(e),
    }
}

async fn get_key(State(a): State<Admin>, Path(id): Path<String>) -> Response {
    match a.service.admin_key(&id) {
        Some(k) => axum::Json(key_view(&k)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            &format!("no access key with id {id:?}"),
        ),
    }
}

async fn delete_key(State(a): State<Admin>, Path(id): Path<String>) -> Response {
    match a.service.admin_delete_key(&id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => admin_error(e),
    }
}

async fn get_permissions(State(a): State<Admin>, Path(key): Path<String>) -> Response {
    match a.service.admin_key_by_access(&key) {
        Some(k) => axum::Json(key_view(&k)).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such access key"),
    }
}

async fn set_permissions(
    State(a): State<Admin>,
    Path(key): Path<String>,
    bytes: Bytes,
) -> Response {
    let req: Permissions = match body(&bytes) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    let (send, receive) = (
        req.send.unwrap_or_default(),
        req.receive.unwrap_or_default(),
    );
    match a.service.admin_set_permissions(&key, send, receive).await {
        Ok(k) => axum::Json(key_view(&k)).into_response(),
        Err(e) => admin_error(e),
    }
}

#[derive(Deserialize)]
struct Rotate {
    #[serde(default)]
    access_key: Option<String>,
}

async fn rotate(State(a): State<Admin>, bytes: Bytes) -> Response {
    let req: Rotate = match body(&bytes) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    let Some(key) = req.access_key.filter(|k| !k.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "access_key is required");
    };
    match a.service.admin_rotate_key(&key).await {
        Ok(pair) => axum::Json(json!({
            "public_key": pair.public_key,
            "private_key": pair.secret_key.as_str(),
        }))
        .into_response(),
        Err(e) => admin_error(e),
    }
}

async fn list_events(State(a): State<Admin>, Query(p): Query<Page>) -> Response {
    let mut events = a.service.admin_events();
    match p.order_by.as_deref() {
        Some("name") => events.sort_by(|x, y| x.name.cmp(&y.name)),
        Some("updatedAt") => events.sort_by_key(|x| x.updated_ms),
        _ => events.sort_by_key(|x| x.created_ms),
    }
    page(events, &p, event_view).unwrap_or_else(|e| *e)
}

async fn get_event(State(a): State<Admin>, Path(id): Path<String>) -> Response {
    match a.service.admin_event(&id) {
        Some(e) => axum::Json(event_view(&e)).into_response(),
        None => error(StatusCode::NOT_FOUND, &format!("no event {id:?}")),
    }
}

#[derive(Deserialize)]
struct EventBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    payload: Option<serde_json::Map<String, Value>>,
}

async fn create_event(State(a): State<Admin>, bytes: Bytes) -> Response {
    let req: EventBody = match body(&bytes) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    let Some(name) = req.name.filter(|n| !n.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "name is required");
    };
    match a
        .service
        .admin_create_event(&name, req.payload.unwrap_or_default())
        .await
    {
        Ok(e) => (StatusCode::CREATED, axum::Json(event_view(&e))).into_response(),
        Err(e) => admin_error(e),
    }
}

async fn update_event(State(a): State<Admin>, Path(id): Path<String>, bytes: Bytes) -> Response {
    let req: EventBody = match body(&bytes) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    let name = req.name.unwrap_or_default();
    match a
        .service
        .admin_update_event(&id, &name, req.payload.unwrap_or_default())
        .await
    {
        Ok(e) => axum::Json(event_view(&e)).into_response(),
        Err(e) => admin_error(e),
    }
}
