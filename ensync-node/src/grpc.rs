//! The gRPC endpoint: both RPC generations of `EnSyncService` over one [`NodeService`].
//!
//! Application errors are answered as `success = false` plus the reason, as the published
//! clients expect. `Subscribe` cannot carry `success = false`, so its refusals are gRPC
//! statuses: `UNAUTHENTICATED`, `PERMISSION_DENIED`, `INVALID_ARGUMENT`; a stream ended by
//! the node (session expired, shutdown) ends with `UNAVAILABLE`, which the published
//! clients answer by reconnecting.

use std::pin::Pin;

use ensync_proto::clients::{self, ClientKind};
use ensync_proto::wire;
use futures::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use crate::rpc::en_sync_service_server::EnSyncService;
use crate::service::{DeliveredEvent, NodeService, PublishRequest, ServiceError};

/// The tonic service: a thin mapping of each RPC onto [`NodeService`].
#[derive(Debug, Clone)]
pub struct GrpcService {
    service: NodeService,
}

impl GrpcService {
    /// Wraps a service.
    pub fn new(service: NodeService) -> Self {
        Self { service }
    }

    /// The tonic server for this service, with message size limits wide enough that
    /// oversized payloads reach the node's own checks (and get a `success = false` reason).
    pub fn into_server(
        self,
        max_message: usize,
    ) -> crate::rpc::en_sync_service_server::EnSyncServiceServer<Self> {
        crate::rpc::en_sync_service_server::EnSyncServiceServer::new(self)
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message)
    }
}

fn to_wire(ev: DeliveredEvent) -> wire::EventStreamResponse {
    wire::EventStreamResponse {
        event_idem: ev.idem,
        event_name: ev.name,
        payload: ev.payload,
        partition_block: i64::try_from(ev.block).unwrap_or(i64::MAX),
        metadata: ev.metadata,
        sender: ev.sender,
    }
}

/// The client family of a request, from its `user-agent` header.
fn client_kind<T>(request: &Request<T>) -> ClientKind {
    ClientKind::from_user_agent(
        request
            .metadata()
            .get("user-agent")
            .and_then(|v| v.to_str().ok()),
    )
}

fn status_of(e: ServiceError) -> Status {
    match e {
        ServiceError::NotAuthenticated | ServiceError::InvalidAccessKey => {
            Status::unauthenticated(e.to_string())
        }
        ServiceError::Forbidden(m) => Status::permission_denied(m),
        ServiceError::ShuttingDown => Status::unavailable(e.to_string()),
        ServiceError::Storage(m) => Status::internal(m),
        other => Status::invalid_argument(other.to_string()),
    }
}

fn message(r: Result<(), ServiceError>) -> (bool, String) {
    match r {
        Ok(()) => (true, String::new()),
        Err(e) => (false, e.to_string()),
    }
}

/// The stream type of `Subscribe`.
pub type SubscribeStream =
    Pin<Box<dyn Stream<Item = Result<wire::EventStreamResponse, Status>> + Send + 'static>>;

impl GrpcService {
    async fn do_publish(&self, r: wire::PublishEventRequest) -> wire::PublishEventResponse {
        let req = PublishRequest {
            client_id: r.client_id,
            event_name: r.event_name,
            payload: r.payload,
            delivery_to: r.delivery_to,
            metadata: r.metadata,
            payload_metadata: r.payload_metadata,
        };
        match self.service.publish(req).await {
            Ok(id) => wire::PublishEventResponse {
                success: true,
                event_idem: id,
                error_message: String::new(),
            },
            Err(e) => wire::PublishEventResponse {
                success: false,
                event_idem: String::new(),
                error_message: e.to_string(),
            },
        }
    }

    async fn do_ack(&self, r: wire::AcknowledgeRequest) -> wire::AcknowledgeResponse {
        let (success, message) = message(
            self.service
                .ack_at(&r.client_id, &r.event_idem, r.partition_block)
                .await,
        );
        let message = if success {
            "acknowledged".to_owned()
        } else {
            message
        };
        wire::AcknowledgeResponse { success, message }
    }

    async fn do_defer(&self, r: wire::DeferRequest) -> wire::DeferResponse {
        match self
            .service
            .defer(&r.client_id, &r.event_idem, r.delay_ms, &r.reason)
            .await
        {
            Ok(due) => wire::DeferResponse {
                success: true,
                message: "deferred".into(),
                delivery_time: i64::try_from(due).unwrap_or(i64::MAX),
            },
            Err(e) => wire::DeferResponse {
                success: false,
                message: e.to_string(),
                delivery_time: 0,
            },
        }
    }

    async fn do_discard(&self, r: wire::DiscardRequest) -> wire::DiscardResponse {
        let (success, message) = message(
            self.service
                .discard(&r.client_id, &r.event_idem, &r.reason)
                .await,
        );
        let message = if success {
            "discarded".to_owned()
        } else {
            message
        };
        wire::DiscardResponse { success, message }
    }

    /// Replay, answered in the form the asking client reads ([`ClientKind::replay_form`]:
    /// the bare envelope for `grpc-python`, the stream-message JSON for everyone else).
    async fn do_replay(&self, kind: ClientKind, r: wire::ReplayRequest) -> wire::ReplayResponse {
        match self
            .service
            .replay(&r.client_id, &r.event_idem, &r.event_name)
            .await
        {
            Ok(ev) => wire::ReplayResponse {
                success: true,
                message: "replayed".into(),
                event_data: clients::encode_replay(kind.replay_form(), &to_wire(ev)),
            },
            Err(e) => wire::ReplayResponse {
                success: false,
                message: e.to_string(),
                event_data: String::new(),
            },
        }
    }

    fn do_pause(&self, r: wire::PauseRequest) -> wire::PauseResponse {
        let (success, message) =
            message(self.service.pause(&r.client_id, &r.event_name, &r.reason));
        let message = if success {
            "paused".to_owned()
        } else {
            message
        };
        wire::PauseResponse { success, message }
    }

    fn do_continue(&self, r: wire::ContinueRequest) -> wire::ContinueResponse {
        let (success, message) = message(self.service.resume(&r.client_id, &r.event_name));
        let message = if success {
            "continued".to_owned()
        } else {
            message
        };
        wire::ContinueResponse { success, message }
    }
}

type Res<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl EnSyncService for GrpcService {
    async fn connect(&self, request: Request<wire::ConnectRequest>) -> Res<wire::ConnectResponse> {
        let kind = client_kind(&request);
        let r = request.into_inner();
        let connected = self.service.connect_as(&r.access_key, kind);
        if let Err(ServiceError::ShuttingDown) = connected {
            // Not a refusal of the key: every client retries UNAVAILABLE (another node,
            // or this one once restarted), while `success = false` reads as a bad key.
            return Err(Status::unavailable("node is shutting down"));
        }
        Ok(Response::new(match connected {
            Ok(c) => wire::ConnectResponse {
                success: true,
                client_id: c.client_id,
                client_hash: c.client_hash,
                server_config: c.server_config,
                error_message: String::new(),
            },
            Err(e) => wire::ConnectResponse {
                success: false,
                error_message: e.to_string(),
                ..Default::default()
            },
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<wire::HeartbeatRequest>,
    ) -> Res<wire::HeartbeatResponse> {
        let success = self
            .service
            .heartbeat(&request.into_inner().client_id)
            .is_ok();
        Ok(Response::new(wire::HeartbeatResponse { success }))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<wire::SubscribeRequest>,
    ) -> Res<Self::SubscribeStream> {
        let r = request.into_inner();
        let stream = self
            .service
            .subscribe(&r.client_id, &r.event_name)
            .map_err(status_of)?;
        let mapped = stream.map(|item| match item {
            Ok(ev) => Ok(to_wire(ev)),
            Err(end) => Err(Status::unavailable(end.to_string())),
        });
        Ok(Response::new(Box::pin(mapped)))
    }

    async fn unsubscribe(
        &self,
        request: Request<wire::UnsubscribeRequest>,
    ) -> Res<wire::UnsubscribeResponse> {
        let r = request.into_inner();
        let (success, message) = message(self.service.unsubscribe(&r.client_id, &r.event_name));
        let message = if success {
            "unsubscribed".to_owned()
        } else {
            message
        };
        Ok(Response::new(wire::UnsubscribeResponse {
            success,
            message,
        }))
    }

    async fn publish_event(
        &self,
        request: Request<wire::PublishEventRequest>,
    ) -> Res<wire::PublishEventResponse> {
        Ok(Response::new(self.do_publish(request.into_inner()).await))
    }
    async fn publish_message(
        &self,
        request: Request<wire::PublishEventRequest>,
    ) -> Res<wire::PublishEventResponse> {
        Ok(Response::new(self.do_publish(request.into_inner()).await))
    }

    async fn acknowledge_event(
        &self,
        request: Request<wire::AcknowledgeRequest>,
    ) -> Res<wire::AcknowledgeResponse> {
        Ok(Response::new(self.do_ack(request.into_inner()).await))
    }
    async fn acknowledge_message(
        &self,
        request: Request<wire::AcknowledgeRequest>,
    ) -> Res<wire::AcknowledgeResponse> {
        Ok(Response::new(self.do_ack(request.into_inner()).await))
    }

    async fn defer_event(&self, request: Request<wire::DeferRequest>) -> Res<wire::DeferResponse> {
        Ok(Response::new(self.do_defer(request.into_inner()).await))
    }
    async fn defer_message(
        &self,
        request: Request<wire::DeferRequest>,
    ) -> Res<wire::DeferResponse> {
        Ok(Response::new(self.do_defer(request.into_inner()).await))
    }

    async fn discard_event(
        &self,
        request: Request<wire::DiscardRequest>,
    ) -> Res<wire::DiscardResponse> {
        Ok(Response::new(self.do_discard(request.into_inner()).await))
    }
    async fn discard_message(
        &self,
        request: Request<wire::DiscardRequest>,
    ) -> Res<wire::DiscardResponse> {
        Ok(Response::new(self.do_discard(request.into_inner()).await))
    }

    async fn replay_event(
        &self,
        request: Request<wire::ReplayRequest>,
    ) -> Res<wire::ReplayResponse> {
        let kind = client_kind(&request);
        Ok(Response::new(
            self.do_replay(kind, request.into_inner()).await,
        ))
    }
    async fn replay_message(
        &self,
        request: Request<wire::ReplayRequest>,
    ) -> Res<wire::ReplayResponse> {
        let kind = client_kind(&request);
        Ok(Response::new(
            self.do_replay(kind, request.into_inner()).await,
        ))
    }

    async fn pause_events(&self, request: Request<wire::PauseRequest>) -> Res<wire::PauseResponse> {
        Ok(Response::new(self.do_pause(request.into_inner())))
    }
    async fn pause_messages(
        &self,
        request: Request<wire::PauseRequest>,
    ) -> Res<wire::PauseResponse> {
        Ok(Response::new(self.do_pause(request.into_inner())))
    }

    async fn continue_events(
        &self,
        request: Request<wire::ContinueRequest>,
    ) -> Res<wire::ContinueResponse> {
        Ok(Response::new(self.do_continue(request.into_inner())))
    }
    async fn continue_messages(
        &self,
        request: Request<wire::ContinueRequest>,
    ) -> Res<wire::ContinueResponse> {
        Ok(Response::new(self.do_continue(request.into_inner())))
    }
}
