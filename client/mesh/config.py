"""Envoy's configuration, rendered from one source: the local mesh (``make serve REPLICAS=N``,
the chaos run, the tests) and the Helm chart
(``deploy/chart/fraud-scoring/files/envoy.yaml``) both come from :func:`render`.

What it declares:
- one gRPC (HTTP/2) listener on the callers' port, optionally TLS (``Tls``);
- the callers' routes: Triton's inference, metadata and health methods and
  ``grpc.health.v1``; everything else of Triton's gRPC API answers 403 unless the request
  carries the operator's header (Triton then checks its value: ``client.local.operator``);
- per client (remote address) a local rate limit, and a request size limit (gRPC callers
  over it get RESOURCE_EXHAUSTED naming the limit);
- the ``triton`` cluster: least-request balancing over the replicas, active gRPC health
  checks (``grpc.health.v1``; Triton's strict readiness makes it NOT_SERVING while a loaded
  model is not ready), outlier detection, a retry budget, retries of what failed before an
  answer (refused, reset, UNAVAILABLE) on another replica, a per-try timeout inside the
  budget, the caller's ``grpc-timeout`` as the request's deadline;
- the admin interface (stats for Prometheus at ``/stats/prometheus``) on its own port,
  never on the callers' listener.

Endpoints come from a file Envoy watches (EDS, ``Endpoints.file``): an operator drains a
replica by marking it DRAINING there (no new requests; those in flight finish), or from
DNS in a cluster (``Endpoints.dns``: the Triton pods' headless service).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from client.local.operator import GRPC_HEADER
from python_backend.fraud.deadline import ARRIVAL_HEADER, CALLER_TIMEOUT_HEADER
from python_backend.fraud.scoring import DEFAULT_BUDGET_MS

#: Triton's gRPC service; the methods callers may use (inference, metadata, health).
SERVICE = "inference.GRPCInferenceService"
CALLER_METHODS = (
    "ModelInfer",
    "ModelStreamInfer",
    "ModelMetadata",
    "ModelReady",
    "ServerLive",
    "ServerReady",
    "ServerMetadata",
)
HEALTH_SERVICE = "grpc.health.v1.Health"
CLUSTER = "triton"


@dataclass(frozen=True)
class Tls:
    """Where the listener's certificate and key are (PEM files)."""

    cert: str
    key: str


@dataclass(frozen=True)
class Endpoints:
    """Where the cluster's replicas come from: a watched EDS file, or DNS."""

    file: str | None = None
    dns: tuple[str, int] | None = None

    def cluster_fields(self) -> dict:
        if self.file is not None:
            watched = str(Path(self.file).parent)
            return {
                "type": "EDS",
                "eds_cluster_config": {
                    "eds_config": {
                        "resource_api_version": "V3",
                        "path_config_source": {
                            "path": self.file,
                            "watched_directory": {"path": watched},
                        },
                    }
                },
            }
        host, port = self.dns
        return {
            "type": "STRICT_DNS",
            "dns_lookup_family": "V4_ONLY",
            # A pod leaving the headless service (its preStop) is out of rotation within 1 s.
            "dns_refresh_rate": "1s",
            "respect_dns_ttl": False,
            "load_assignment": {
                "cluster_name": CLUSTER,
                "endpoints": [{"lb_endpoints": [endpoint(host, port)]}],
            },
        }


@dataclass(frozen=True)
class Limits:
    """What one caller may send: requests per second (a token bucket per remote address) and
    the size of one request."""

    rps_per_client: int = 2000
    burst: int = 400
    max_request_bytes: int = 1 << 20


@dataclass(frozen=True)
class MeshConfig:
    listen_address: str = "127.0.0.1"
    listen_port: int = 8001
    admin_address: str = "127.0.0.1"
    admin_port: int = 9901
    endpoints: Endpoints = field(default_factory=lambda: Endpoints(dns=("triton", 8001)))
    tls: Tls | None = None
    limits: Limits = field(default_factory=Limits)
    budget_ms: float = DEFAULT_BUDGET_MS
    #: A request's deadline when the caller sends no ``grpc-timeout`` (and the most one may ask).
    max_timeout_s: float = 1.0


def endpoint(host: str, port: int, health: str = "HEALTHY") -> dict:
    return {
        "endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}},
        "health_status": health,
    }


def load_assignment(replicas: list[tuple[str, int, str]]) -> dict:
    """The EDS file's content: (host, port, health status) per replica."""
    return {
        "version_info": "0",
        "resources": [
            {
                "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                "cluster_name": CLUSTER,
                "endpoints": [{"lb_endpoints": [endpoint(h, p, s) for h, p, s in replicas]}],
            }
        ],
    }


def _seconds(s: float) -> str:
    return f"{s:.3f}s"


def per_try_timeout_s(budget_ms: float) -> float:
    """A replica that has not answered by 60% of the budget is given up for another: the
    service answers well inside its budget when healthy (P99 about 25 ms here), and the
    second try still has 40% of it."""
    return round(budget_ms * 0.6 / 1000, 3)


def _routes(config: MeshConfig) -> list[dict]:
    upstream = {
        "cluster": CLUSTER,
        "timeout": _seconds(config.max_timeout_s),
        # The caller's grpc-timeout is the request's deadline (at most max_timeout_s).
        "max_stream_duration": {"grpc_timeout_header_max": _seconds(config.max_timeout_s)},
        "retry_policy": {
            # Only what failed before the service answered: the request did not run (or its
            # replica went away), so trying another replica decides it once.
            "retry_on": "connect-failure,refused-stream,reset,unavailable",
            "num_retries": 2,
            "per_try_timeout": _seconds(per_try_timeout_s(config.budget_ms)),
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {
                        "@type": "type.googleapis.com/"
                        "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                    },
                }
            ],
            "host_selection_retry_max_attempts": 3,
            "retry_back_off": {"base_interval": "0.002s", "max_interval": "0.010s"},
        },
    }
    # When the request reached the edge, and the caller's grpc-timeout (gRPC consumes the
    # original before Triton could forward it): Triton hands both to the model as request
    # parameters (``--grpc-header-forward-pattern``), beside the router's
    # ``x-envoy-expected-rq-timeout-ms``; the BLS counts its budget from them.
    stamp = [
        {
            "header": {"key": ARRIVAL_HEADER, "value": "t=%START_TIME(%s.%6f)%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        },
        {
            "header": {"key": CALLER_TIMEOUT_HEADER, "value": "%REQ(grpc-timeout)%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        },
    ]
    callers = [
        {
            "name": f"callers-{method}",
            "match": {"path": f"/{SERVICE}/{method}", "grpc": {}},
            "route": upstream,
            "request_headers_to_add": stamp,
        }
        for method in CALLER_METHODS
    ]
    callers.append(
        {
            "name": "callers-health",
            "match": {"prefix": f"/{HEALTH_SERVICE}/", "grpc": {}},
            "route": upstream,
        }
    )
    operator = {
        "name": "operator",
        "match": {
            "prefix": f"/{SERVICE}/",
            "headers": [{"name": GRPC_HEADER, "present_match": True}],
        },
        # Model loads take seconds; Triton checks the key's value.
        "route": {"cluster": CLUSTER, "timeout": "120s"},
    }
    refused = {
        "name": "refused",
        "match": {"prefix": "/"},
        "direct_response": {
            "status": 403,
            "body": {
                "inline_string": "not part of the callers' API (inference, metadata, health); "
                "administrative calls need the operator's key\n"
            },
        },
    }
    return [*callers, operator, refused]


def _http_filters(config: MeshConfig) -> list[dict]:
    limits = config.limits
    bucket = {
        "max_tokens": limits.burst,
        "tokens_per_fill": limits.rps_per_client,
        "fill_interval": "1s",
    }
    return [
        {
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                "stat_prefix": "callers",
                "token_bucket": {**bucket, "max_tokens": limits.burst * 50},
                "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
                "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
                # One bucket per caller (remote address), made as callers appear.
                "descriptors": [{"entries": [{"key": "remote_address"}], "token_bucket": bucket}],
                "max_dynamic_descriptors": 10000,
                "rate_limits": [{"actions": [{"remote_address": {}}]}],
                # A limited gRPC call says so (RESOURCE_EXHAUSTED), not "the server is down".
                "rate_limited_as_resource_exhausted": True,
                "response_headers_to_add": [
                    {"header": {"key": "x-rate-limited", "value": "per-client"}}
                ],
            },
        },
        {
            "name": "envoy.filters.http.buffer",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                "max_request_bytes": limits.max_request_bytes,
            },
        },
        {
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            },
        },
    ]


def too_large_message(limits: Limits) -> str:
    """What a caller whose request is over ``max_request_bytes`` is told, limit included."""
    return (
        f"request larger than the mesh's limit of {limits.max_request_bytes} bytes "
        "(max_request_bytes): send fewer rows per request or shorter fields"
    )


def _local_replies(config: MeshConfig) -> dict:
    """Envoy's 413 for a request over ``max_request_bytes`` (the buffer filter's), told with
    the limit: Envoy would map it to gRPC UNKNOWN "Payload Too Large", which names no limit and
    is nothing a caller can act on, so gRPC callers get RESOURCE_EXHAUSTED and plain HTTP
    callers keep the 413, both with :func:`too_large_message`."""
    status = {"default_value": 413}
    too_large = {"status_code_filter": {"comparison": {"op": "EQ", "value": status}}}
    grpc = {
        "header_filter": {
            "header": {
                "name": "content-type",
                "string_match": {"prefix": "application/grpc"},
            }
        }
    }
    body = {"inline_string": too_large_message(config.limits)}
    return {
        "mappers": [
            {
                "filter": {"and_filter": {"filters": [too_large, grpc]}},
                "body": body,
                # No HTTP status maps to RESOURCE_EXHAUSTED (8); Envoy keeps a grpc-status
                # already set when it turns a local reply into a gRPC one.
                "headers_to_add": [
                    {
                        "header": {"key": "grpc-status", "value": "8"},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                ],
            },
            {"filter": too_large, "body": body},
        ]
    }


def _listener(config: MeshConfig) -> dict:
    manager = {
        "@type": "type.googleapis.com/"
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "callers",
        "codec_type": "HTTP2",
        "http2_protocol_options": {"max_concurrent_streams": 1024},
        "stream_idle_timeout": "300s",
        # On drain (SIGTERM, hot restart) connections are asked to go away, not cut.
        "drain_timeout": "5s",
        "route_config": {
            "name": "callers",
            "virtual_hosts": [{"name": "triton", "domains": ["*"], "routes": _routes(config)}],
        },
        "http_filters": _http_filters(config),
        "local_reply_config": _local_replies(config),
    }
    chain: dict = {"filters": [{"name": "envoy.filters.network.http_connection_manager"}]}
    chain["filters"][0]["typed_config"] = manager
    if config.tls is not None:
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "tls_certificates": [
                        {
                            "certificate_chain": {"filename": config.tls.cert},
                            "private_key": {"filename": config.tls.key},
                        }
                    ],
                },
            },
        }
    return {
        "name": "callers",
        "address": {
            "socket_address": {
                "address": config.listen_address,
                "port_value": config.listen_port,
            }
        },
        "per_connection_buffer_limit_bytes": 2 * config.limits.max_request_bytes,
        "filter_chains": [chain],
    }


def _cluster(config: MeshConfig) -> dict:
    return {
        "name": CLUSTER,
        "connect_timeout": "0.25s",
        "lb_policy": "LEAST_REQUEST",
        # A replica admitted again after a restart takes a growing share over this window:
        # its first seconds at full share put decisions over budget on two cores.
        "least_request_lb_config": {"slow_start_config": {"slow_start_window": "5s"}},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        **config.endpoints.cluster_fields(),
        "health_checks": [
            {
                "timeout": "0.25s",
                "interval": "0.5s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "no_traffic_interval": "1s",
                "grpc_health_check": {},
                "event_log_path": "/dev/null",
            }
        ],
        "ignore_health_on_host_removal": True,
        # A replica is ejected for errors it answers with (gRPC errors, 5 in a row), not for
        # being slow or unreachable: a slow answer is what every replica gives under a model
        # fault (the fallback takes over within the budget), and an unreachable one is the
        # active health check's to find. Ejecting for per-try timeouts, the first chaos runs
        # here ejected 104 times, a live replica among them, with the ejection time growing
        # with each (5 s x ejections): a later restart then left Envoy in panic, routing to
        # the stopped replica. Ejections last 5 s, growing to 10 s at most.
        "outlier_detection": {
            "split_external_local_origin_errors": True,
            "consecutive_5xx": 5,
            "enforcing_consecutive_local_origin_failure": 0,
            "enforcing_local_origin_success_rate": 0,
            "consecutive_gateway_failure": 3,
            "enforcing_consecutive_gateway_failure": 0,
            "interval": "1s",
            "base_ejection_time": "5s",
            "max_ejection_time": "10s",
            "max_ejection_percent": 50,
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": 1024,
                    "max_pending_requests": 1024,
                    "max_requests": 1024,
                    # Retries at most a fifth of what is in flight (at least 3 at a time): a
                    # struggling cluster is not handed a retry storm.
                    "retry_budget": {
                        "budget_percent": {"value": 20.0},
                        "min_retry_concurrency": 3,
                    },
                }
            ]
        },
    }


def render(config: MeshConfig) -> dict:
    return {
        "node": {"id": "fraud-scoring-envoy", "cluster": "fraud-scoring"},
        "admin": {
            "address": {
                "socket_address": {
                    "address": config.admin_address,
                    "port_value": config.admin_port,
                }
            }
        },
        "static_resources": {"listeners": [_listener(config)], "clusters": [_cluster(config)]},
        "layered_runtime": {
            "layers": [
                {
                    "name": "static",
                    "static_layer": {"overload.global_downstream_max_connections": 10000},
                }
            ]
        },
    }


def dump(config: MeshConfig) -> str:
    return yaml.safe_dump(render(config), sort_keys=False)


def write(config: MeshConfig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump(config))
    return path
