//! One row per Istio rule, valid and invalid, written from Istio's documented rules: each row is
//! read from YAML text and checked the way `interceptor validate` does (load, validate, compile).

use std::path::Path;

use crate::config::{Diagnostic, Severity, Snapshot};
use crate::routing::RouteTable;

/// What Istio does with a row.
#[derive(Clone, Copy, Debug)]
enum Istio {
    /// Accepted without a word.
    Accepts,
    /// Accepted with a warning containing this text.
    Warns(&'static str),
    /// Refused with an error containing this text.
    Refuses(&'static str),
}
use Istio::{Accepts, Refuses, Warns};

/// `(kind, metadata, spec, what Istio does)`, the YAML in flow style.
type Row = (&'static str, &'static str, &'static str, Istio);

const VS: &str = "VirtualService";
const DR: &str = "DestinationRule";
const SE: &str = "ServiceEntry";
const WE: &str = "WorkloadEntry";
const META: &str = "{name: t}";

#[rustfmt::skip]
const VIRTUAL_SERVICES: &[Row] = &[
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}", Accepts),
    (VS, META, "{http: [{route: [{destination: {host: reviews}}]}]}", Accepts),
    (VS, META, "{gateways: [ns/gw], http: [{route: [{destination: {host: reviews}}]}]}", Refuses("delegate virtual service must have no gateways")),
    (VS, META, "{tcp: [{route: [{destination: {host: db}}]}]}", Refuses("delegate virtual service must have no tcp")),
    (VS, META, "{hosts: [reviews], http: [{match: [{headers: {':authority': {exact: a.com}}}], route: [{destination: {host: reviews}}]}]}", Accepts),
    (VS, META, "{hosts: [a.com], gateways: [ns/gw], http: [{match: [{headers: {'@request.auth.claims.group': {exact: admin}}}], route: [{destination: {host: reviews}}]}]}", Accepts),
    (VS, META, "{hosts: [reviews], http: [{match: [{headers: {'@request.auth.claims.group': {exact: admin}}}], route: [{destination: {host: reviews}}]}]}", Refuses("JWT claim based routing")),
    (VS, META, "{hosts: [reviews], http: [{match: [{headers: {'bad header': {exact: a}}}], route: [{destination: {host: reviews}}]}]}", Refuses("is not a valid header name")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}, weight: 0}]}]}", Accepts),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v1}, weight: 0}, {destination: {host: reviews, subset: v2}}]}]}", Refuses("total destination weight = 0")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}, weight: -1}]}]}", Refuses("weight -1 < 0")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v1}, weight: 2147483648}, {destination: {host: reviews}, weight: 1}]}]}", Refuses("int32")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v1}, weight: 25}, {destination: {host: reviews, subset: v2}, weight: 75}]}]}", Accepts),
    (VS, META, "{hosts: [bad_host.com], http: [{route: [{destination: {host: reviews}}]}]}", Refuses("invalid (label")),
    (VS, META, "{hosts: ['*'], http: [{route: [{destination: {host: reviews}}]}]}", Refuses("wildcard host * is not allowed")),
    (VS, META, "{hosts: ['*'], gateways: [ns/gw], http: [{route: [{destination: {host: reviews}}]}]}", Accepts),
    (VS, META, "{hosts: ['foo.*.com'], http: [{route: [{destination: {host: reviews}}]}]}", Refuses("invalid (label")),
    (VS, META, "{hosts: ['*.example.com'], http: [{route: [{destination: {host: reviews}}]}]}", Accepts),
    (VS, META, "{hosts: [10.0.0.1], http: [{route: [{destination: {host: reviews}}]}]}", Accepts),
    (VS, META, "{hosts: [example.123], http: [{route: [{destination: {host: reviews}}]}]}", Refuses("all-numeric")),
    (VS, META, "{hosts: [a.com, a.com], http: [{route: [{destination: {host: reviews}}]}]}", Refuses("duplicate hosts")),
    (VS, META, "{hosts: ['*.foo.com', a.foo.com], http: [{route: [{destination: {host: reviews}}]}]}", Refuses("duplicate hosts")),
    (VS, META, "{hosts: [reviews]}", Refuses("http, tcp or tls must be provided")),
    (VS, META, "{hosts: [reviews], http: [{match: [{uri: {regex: ''}}], route: [{destination: {host: reviews}}]}]}", Refuses("regex string match should not be empty")),
    (VS, META, "{hosts: [reviews], http: [{match: [{uri: {regex: '('}}], route: [{destination: {host: reviews}}]}]}", Refuses("RE2")),
    (VS, META, "{hosts: [reviews], http: [{match: [{uri: {prefix: ''}}], route: [{destination: {host: reviews}}]}]}", Accepts),
    (VS, META, "{hosts: [reviews], http: [{match: [{headers: {x-a: {prefix: ''}}}], route: [{destination: {host: reviews}}]}]}", Refuses("prefix string match should not be empty")),
    (VS, META, "{hosts: [reviews], http: [{match: [{method: {prefix: ''}}], route: [{destination: {host: reviews}}]}]}", Refuses("prefix string match should not be empty")),
    (VS, META, "{hosts: [reviews], http: [{match: [{withoutHeaders: {x-a: {regex: '*'}}}], route: [{destination: {host: reviews}}]}]}", Accepts),
    (VS, META, "{hosts: [reviews], http: [{match: [{method: {exact: FETCH}}], route: [{destination: {host: reviews}}]}]}", Accepts),
    (VS, META, "{hosts: [reviews], http: [{redirect: {uri: /x}, route: [{destination: {host: reviews}}]}]}", Refuses("both route and redirect")),
    (VS, META, "{hosts: [reviews], http: [{redirect: {uri: /x}, fault: {abort: {httpStatus: 500}}}]}", Refuses("both fault and redirect")),
    (VS, META, "{hosts: [reviews], http: [{redirect: {uri: /x}, rewrite: {uri: /y}}]}", Refuses("both rewrite and redirect")),
    (VS, META, "{hosts: [reviews], http: [{directResponse: {status: 503}, route: [{destination: {host: reviews}}]}]}", Refuses("both route and direct_response")),
    (VS, META, "{hosts: [reviews], http: [{directResponse: {status: 503, body: {string: down}}}]}", Accepts),
    (VS, META, "{hosts: [reviews], http: [{directResponse: {status: 99}}]}", Refuses("not in range 200-599")),
    (VS, META, "{hosts: [reviews], http: [{match: [{uri: {prefix: /a}}]}]}", Refuses("route, redirect or direct_response is required")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], mirror: {host: shadow}, mirrors: [{destination: {host: shadow}}]}]}", Refuses("both mirror and mirrors")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], mirror: {host: shadow}, mirrorPercentage: {value: 150}}]}", Refuses("max value of 100")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], mirror: {host: shadow}, mirrorPercent: 50}]}", Warns("deprecated")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], mirrors: [{destination: {host: shadow}, percentage: {value: -1}}]}]}", Refuses("min value of 0")),
    (VS, META, "{hosts: [reviews], http: [{redirect: {redirectCode: 301}}]}", Refuses("redirect must specify URI, authority, scheme, or port")),
    (VS, META, "{hosts: [reviews], http: [{redirect: {uri: /x, redirectCode: 200}}]}", Refuses("must be 3xx")),
    (VS, META, "{hosts: [reviews], http: [{redirect: {uri: /x, redirectCode: 308}}]}", Accepts),
    (VS, META, "{hosts: [reviews], http: [{redirect: {scheme: ftp}}]}", Refuses("invalid redirect scheme")),
    (VS, META, "{hosts: [reviews], http: [{redirect: {port: 70000}}]}", Refuses("1..65535")),
    (VS, META, "{hosts: [reviews], http: [{redirect: {derivePort: FROM_REQUEST_PORT}}]}", Accepts),
    (VS, META, "{hosts: [reviews], http: [{match: [{uri: {exact: /a}}], redirect: {prefixRewrite: /b}}]}", Refuses("requires all URI matches to use prefix")),
    (VS, META, "{hosts: [reviews], http: [{match: [{uri: {prefix: /a}}], redirect: {prefixRewrite: /b}}]}", Warns("not supported yet")),
    (VS, META, "{hosts: [reviews], http: [{rewrite: {}, route: [{destination: {host: reviews}}]}]}", Refuses("rewrite must specify at least one of")),
    (VS, META, "{hosts: [reviews], http: [{rewrite: {authority: b.com}, route: [{destination: {host: reviews}}]}]}", Accepts),
    (VS, META, "{hosts: [reviews], http: [{rewrite: {uri: /a, uriRegexRewrite: {match: a, rewrite: b}}, route: [{destination: {host: reviews}}]}]}", Refuses("only contain one of URI or UriRegexRewrite")),
    (VS, META, "{hosts: [reviews], http: [{rewrite: {uriRegexRewrite: {match: '^/a(.*)', rewrite: '/b\\1'}}, route: [{destination: {host: reviews}}]}]}", Accepts),
    (VS, META, "{hosts: [reviews], http: [{rewrite: {authority: b.com}, headers: {request: {set: {host: c.com}}}, route: [{destination: {host: reviews}}]}]}", Refuses("authority header cannot be set multiple times")),
    (VS, META, "{hosts: [reviews], http: [{headers: {request: {set: {Host: c.com}}}, route: [{destination: {host: reviews}}]}]}", Accepts),
    (VS, META, "{hosts: [reviews], http: [{headers: {request: {set: {':authority': c.com}}}, route: [{destination: {host: reviews}}]}]}", Accepts),
    (VS, META, "{hosts: [reviews], http: [{headers: {request: {set: {':path': /x}}}, route: [{destination: {host: reviews}}]}]}", Refuses("cannot have \":\" prefix")),
    (VS, META, "{hosts: [reviews], http: [{headers: {request: {remove: [host]}}, route: [{destination: {host: reviews}}]}]}", Refuses("cannot set Host header")),
    (VS, META, "{hosts: [reviews], http: [{headers: {response: {set: {Host: a}}}, route: [{destination: {host: reviews}}]}]}", Refuses("cannot set Host header")),
    (VS, META, "{hosts: [reviews], http: [{headers: {response: {add: {'': a}}}, route: [{destination: {host: reviews}}]}]}", Refuses("header name cannot be empty")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}, headers: {request: {set: {x-a: 'abc%'}}}}]}]}", Refuses("header value configuration")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}, headers: {response: {set: {x-served-by: '%HOSTNAME%'}}}}]}]}", Accepts),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], timeout: 500us}]}", Refuses("duration must be greater than 1ms")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], timeout: 1500us}]}", Refuses("only durations to ms precision")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], timeout: 1.5s}]}", Accepts),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], timeout: 1d}]}", Refuses("invalid duration")),
    (VS, META, "{hosts: [reviews], http: [{match: [null], route: [{destination: {host: reviews}}]}]}", Accepts),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], retries: {attempts: 0, perTryTimeout: 2s}}]}", Refuses("attempts are set to 0")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], retries: {attempts: 0}}]}", Accepts),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], retries: {attempts: -1}}]}", Refuses("attempts cannot be negative")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], retries: {attempts: 3, retryOn: sometimes}}]}", Refuses("not a valid retryOn policy")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], retries: {attempts: 3, retryOn: '5xx,503,reset,unavailable', backoff: 25ms}}]}", Accepts),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], fault: {}}]}", Refuses("must have an abort and/or a delay")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], fault: {abort: {httpStatus: 700}}}]}", Refuses("not in range 200-599")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], fault: {abort: {percentage: {value: 10}}}}]}", Warns("error type not set")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], fault: {abort: {grpcStatus: NOPE}}}]}", Refuses("gRPC status")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], fault: {abort: {http2Error: x}}}]}", Refuses("HTTP/2 abort")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], fault: {delay: {fixedDelay: 5s, percentage: {value: 150}}}}]}", Refuses("percentage 150")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], fault: {delay: {exponentialDelay: 5s}}}]}", Refuses("exponentialDelay not supported")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], fault: {delay: {fixedDelay: 5s, percentage: {value: 0.1}}, abort: {httpStatus: 503, percentage: {value: 1}}}}]}", Accepts),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], corsPolicy: {allowOrigins: [{exact: ''}]}}]}", Refuses("not a valid match type for CORS")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], corsPolicy: {allowOrigins: [{prefix: 'https://'}], allowMethods: [GET, POST], allowHeaders: ['*'], maxAge: 24h}}]}", Accepts),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], corsPolicy: {allowMethods: [FETCH]}}]}", Refuses("not a supported HTTP method")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], corsPolicy: {maxAge: 1500ms}}]}", Refuses("seconds precision")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], corsPolicy: {exposeHeaders: ['bad header']}}]}", Refuses("not a valid header name")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: '*'}}]}]}", Refuses("invalid destination host")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v_1}}]}]}", Refuses("subset name is invalid")),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews, port: {number: 70000}}}]}]}", Refuses("1..65535")),
    (VS, META, "{hosts: [reviews], http: [{match: [{port: 70000}], route: [{destination: {host: reviews}}]}]}", Refuses("1..65535")),
    (VS, META, "{hosts: [reviews], http: [{match: [{sourceNamespace: Bad_ns}], route: [{destination: {host: reviews}}]}]}", Refuses("sourceNamespace match")),
    (VS, META, "{hosts: [reviews], http: [{match: [{sourceLabels: {'a b': x}}], route: [{destination: {host: reviews}}]}]}", Refuses("invalid tag key")),
    (VS, META, "{hosts: [reviews], http: [{match: [{gateways: [ns/bad_gw]}], route: [{destination: {host: reviews}}]}]}", Refuses("invalid value for gateway name")),
    (VS, META, "{hosts: [reviews], gateways: [gw.ns], http: [{route: [{destination: {host: reviews}}]}]}", Warns("legacy gatewayName")),
    (VS, META, "{hosts: [reviews], http: [{delegate: {name: other}, route: [{destination: {host: reviews}}]}]}", Refuses("must not specify route")),
    (VS, META, "{http: [{delegate: {name: other}}]}", Refuses("delegate HTTP route cannot contain delegate")),
    (VS, META, "{hosts: [db], tcp: [{route: []}]}", Refuses("TCP route is required")),
    (VS, META, "{hosts: [db], tcp: [{match: [{destinationSubnets: [10.0.0.0/33]}], route: [{destination: {host: db}}]}]}", Refuses("not a valid CIDR block")),
    (VS, META, "{hosts: [db], tcp: [{match: [{destinationSubnets: [10.0.0.0/8], port: 5432, sourceSubnet: 10.1.0.0/16}], route: [{destination: {host: db}}]}]}", Warns("not supported yet")),
    (VS, META, "{hosts: ['*.example.com'], tls: [{match: [{sniHosts: [a.example.com]}], route: [{destination: {host: a.example.com}}]}]}", Accepts),
    (VS, META, "{hosts: ['*.example.com'], tls: [{match: [{sniHosts: [a.other.com]}], route: [{destination: {host: a.example.com}}]}]}", Refuses("not a compatible subset")),
    (VS, META, "{hosts: [a.example.com], tls: [{route: [{destination: {host: a.example.com}}]}]}", Refuses("at least one match condition")),
    (VS, META, "{hosts: [reviews], exportTo: ['~'], http: [{route: [{destination: {host: reviews}}]}]}", Refuses("exportTo ~ (none) is not allowed")),
    (VS, META, "{hosts: [reviews], exportTo: ['.', '*'], http: [{route: [{destination: {host: reviews}}]}]}", Refuses("cannot have both public")),
    (VS, META, "{hosts: [reviews], exportTo: [other-ns], http: [{route: [{destination: {host: reviews}}]}]}", Accepts),
    (VS, META, "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}], wieght: 3}]}", Refuses("unknown field")),
    (VS, "{name: t, annotations: {istio.io/dry-run: 'true'}}", "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}", Refuses("unsupported annotation")),
];

#[rustfmt::skip]
const DESTINATION_RULES: &[Row] = &[
    (DR, META, "{host: reviews, subsets: [{name: v1, labels: {version: v1}}, {name: V2, labels: {version: v2}}]}", Accepts),
    (DR, META, "{host: bad_host}", Refuses("invalid (label")),
    (DR, META, "{host: '*.example.com', trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}", Accepts),
    (DR, META, "{host: reviews, trafficPolicy: {}}", Refuses("traffic policy must have at least one field")),
    (DR, META, "{host: reviews, subsets: [{name: v1}, {name: v1}]}", Refuses("duplicate subset names")),
    (DR, META, "{host: reviews, subsets: [{name: v_1}]}", Refuses("subset name is invalid")),
    (DR, META, "{host: reviews, subsets: [{name: v1, labels: {version: '-bad'}}]}", Refuses("invalid tag value")),
    (DR, META, "{host: reviews, trafficPolicy: {connectionPool: {}}}", Refuses("connection pool must have at least one field")),
    (DR, META, "{host: reviews, trafficPolicy: {connectionPool: {tcp: {maxConnections: -1}}}}", Refuses("max connections must be non-negative")),
    (DR, META, "{host: reviews, trafficPolicy: {connectionPool: {tcp: {maxConnections: 0}, http: {http1MaxPendingRequests: 0}}}}", Accepts),
    (DR, META, "{host: reviews, trafficPolicy: {connectionPool: {http: {http2MaxRequests: -1}}}}", Refuses("http2 max requests must be non-negative")),
    (DR, META, "{host: reviews, trafficPolicy: {connectionPool: {http: {idleTimeout: 0s}}}}", Refuses("duration must be greater than 1ms")),
    (DR, META, "{host: reviews, trafficPolicy: {connectionPool: {tcp: {idleTimeout: 0s}}}}", Accepts),
    (DR, META, "{host: reviews, trafficPolicy: {connectionPool: {tcp: {connectTimeout: 500us}}}}", Refuses("duration must be greater than 1ms")),
    (DR, META, "{host: reviews, trafficPolicy: {connectionPool: {tcp: {tcpKeepalive: {time: 1500us}}}}}", Refuses("only durations to ms precision")),
    (DR, META, "{host: reviews, trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE, useClientProtocol: true}}}}", Refuses("use client protocol must not be true")),
    (DR, META, "{host: reviews, trafficPolicy: {connectionPool: {http: {http2KeepAlive: {interval: 10s}}}}}", Refuses("http2 keepalive timeout is required")),
    (DR, META, "{host: reviews, trafficPolicy: {outlierDetection: {maxEjectionPercent: 101}}}", Refuses("percentage 101 is not in range")),
    (DR, META, "{host: reviews, trafficPolicy: {outlierDetection: {minHealthPercent: -1}}}", Refuses("not in range")),
    (DR, META, "{host: reviews, trafficPolicy: {outlierDetection: {interval: 0s}}}", Refuses("duration must be greater than 1ms")),
    (DR, META, "{host: reviews, trafficPolicy: {outlierDetection: {consecutiveLocalOriginFailures: 5}}}", Refuses("split external local origin errors")),
    (DR, META, "{host: reviews, trafficPolicy: {outlierDetection: {consecutiveLocalOriginFailures: 5, splitExternalLocalOriginErrors: true}}}", Warns("not supported yet")),
    (DR, META, "{host: reviews, trafficPolicy: {outlierDetection: {consecutiveErrors: 5}}}", Warns("consecutive errors is deprecated")),
    (DR, META, "{host: reviews, trafficPolicy: {outlierDetection: {consecutive5xxErrors: 3, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}}}", Accepts),
    (DR, META, "{host: reviews, trafficPolicy: {loadBalancer: {consistentHash: {maglev: {tableSize: 65536}, httpHeaderName: x-user}}}}", Refuses("prime")),
    (DR, META, "{host: reviews, trafficPolicy: {loadBalancer: {consistentHash: {maglev: {tableSize: 65537}, httpHeaderName: x-user}}}}", Accepts),
    (DR, META, "{host: reviews, trafficPolicy: {loadBalancer: {consistentHash: {maglev: {}, useSourceIp: true}}}}", Refuses("tableSize must be set")),
    (DR, META, "{host: reviews, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: s, ttl: 0s, attributes: [{name: a}, {name: a}]}}}}}", Refuses("duplicate cookie attribute name")),
    (DR, META, "{host: reviews, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: s, attributes: [{name: ''}]}}}}}", Refuses("cookie attribute name cannot be empty")),
    (DR, META, "{host: reviews, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: s, ttl: 0s}}}}}", Accepts),
    (DR, META, "{host: reviews, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: '', ttl: 10s}}}}}", Refuses("name required for HttpCookie")),
    (DR, META, "{host: reviews, trafficPolicy: {loadBalancer: {consistentHash: {minimumRingSize: 1024, ringHash: {minimumRingSize: 1024}, useSourceIp: true}}}}", Refuses("only one of MinimumRingSize")),
    // Istio takes any size (Envoy caps at 2^23); the agent caps rings at 2^20 points and says so.
    (DR, META, "{host: reviews, trafficPolicy: {loadBalancer: {consistentHash: {ringHash: {minimumRingSize: 6411111111111111111}, useSourceIp: true}}}}", Warns("rings are capped at 1048576 points")),
    (DR, META, "{host: reviews, trafficPolicy: {loadBalancer: {consistentHash: {minimumRingSize: 1024, useSourceIp: true}}}}", Warns("MinimumRingSize is deprecated")),
    (DR, META, "{host: reviews, trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: a/b/c, to: {a/b/c: 100}}], failover: [{from: a, to: b}]}}}}", Refuses("simultaneously specify 'distribute' and 'failover'")),
    (DR, META, "{host: reviews, trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: 'us/*', to: {'us/a/*': 60, 'us/b/*': 30}}]}}}}", Refuses("total locality weight 90 != 100")),
    (DR, META, "{host: reviews, trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: 'us/*', to: {'us/a/*': 60, 'us/b/*': 40}}]}}}}", Warns("not supported yet")),
    (DR, META, "{host: reviews, trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: us, to: us}]}}, outlierDetection: {consecutive5xxErrors: 3}}}", Refuses("must specify different regions")),
    (DR, META, "{host: reviews, trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: us, to: eu}]}}}}", Warns("outlier detection policy must be provided for failover")),
    (DR, META, "{host: reviews, trafficPolicy: {loadBalancer: {warmup: {duration: 300s, minimumPercent: 150}}}}", Refuses("minimumPercent")),
    (DR, META, "{host: reviews, trafficPolicy: {loadBalancer: {warmup: {minimumPercent: 5}}}}", Refuses("duration is required")),
    (DR, META, "{host: reviews, trafficPolicy: {loadBalancer: {warmup: {duration: 300s, aggression: -0.1}}}}", Refuses("aggression should be greater than 0")),
    (DR, META, "{host: reviews, trafficPolicy: {loadBalancer: {warmup: {duration: 30s}}}}", Warns("not supported yet")),
    (DR, META, "{host: reviews, trafficPolicy: {tls: {mode: MUTUAL}}}", Refuses("client certificate required for mutual tls")),
    (DR, META, "{host: reviews, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}", Warns("ISTIO_MUTUAL needs Istio's CA")),
    (DR, META, "{host: reviews, trafficPolicy: {portLevelSettings: [{port: {number: 80}, tls: {mode: ISTIO_MUTUAL}}]}}", Warns("503 UF")),
    (DR, META, "{host: reviews, trafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: true}}}", Accepts),
    (DR, META, "{host: reviews, trafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: true, caCrl: /crl.pem}}}", Warns("not supported yet")),
    (DR, META, "{host: reviews, trafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: true, caCertificates: /ca.pem}}}", Refuses("InsecureSkipVerify")),
    (DR, META, "{host: reviews, trafficPolicy: {tls: {mode: SIMPLE, credentialName: c, caCertificates: /ca.pem}}}", Refuses("If credentialName is set")),
    (DR, META, "{host: reviews, trafficPolicy: {tls: {mode: WRONG}}}", Refuses("is not DISABLE")),
    (DR, META, "{host: reviews, trafficPolicy: {portLevelSettings: [{connectionPool: {tcp: {maxConnections: 10}}}]}}", Refuses("portTrafficPolicy must have valid port")),
    (DR, META, "{host: reviews, trafficPolicy: {portLevelSettings: [{port: {number: 80}}]}}", Refuses("port traffic policy must have at least one field")),
    (DR, META, "{host: reviews, trafficPolicy: {portLevelSettings: [{port: {number: 80}, connectionPool: {tcp: {maxConnections: -1}}}]}}", Refuses("max connections must be non-negative")),
    (DR, META, "{host: reviews, trafficPolicy: {portLevelSettings: [{port: {number: 80}, loadBalancer: {simple: RANDOM}}]}}", Warns("not supported yet")),
    (DR, META, "{host: reviews, trafficPolicy: {tunnel: {protocol: GET, targetHost: proxy.example.com, targetPort: 3128}}}", Refuses("tunnel protocol must be")),
    (DR, META, "{host: reviews, trafficPolicy: {tunnel: {targetHost: proxy.example.com}}}", Refuses("tunnel target port is invalid")),
    (DR, META, "{host: reviews, trafficPolicy: {tunnel: {targetHost: proxy.example.com, targetPort: 3128}, proxyProtocol: {version: V1}}}", Refuses("tunnel and proxyProtocol must not be set together")),
    (DR, META, "{host: reviews, trafficPolicy: {proxyProtocol: {version: V3}}}", Refuses("proxy protocol version is invalid")),
    (DR, META, "{host: reviews, trafficPolicy: {retryBudget: {percent: 20, minRetryConcurrency: 3}}}", Warns("not supported yet")),
    (DR, META, "{host: reviews, workloadSelector: {matchLabels: {app: reviews}}, exportTo: ['*']}", Refuses("workload selector cannot have exportTo beyond current namespace")),
    (DR, META, "{host: reviews, workloadSelector: {matchLabels: {app: '*'}}}", Refuses("wildcard is not supported in selector")),
    (DR, META, "{host: reviews, exportTo: ['.', default]}", Refuses("duplicate entries in exportTo")),
    (DR, META, "{host: reviews, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}, fluff: 1}", Refuses("unknown field")),
];

#[rustfmt::skip]
const SERVICE_ENTRIES: &[Row] = &[
    (SE, META, "{hosts: [api.example.com], addresses: [240.0.0.1], ports: [{number: 80, name: http, protocol: HTTP}], resolution: STATIC, endpoints: [{address: 10.0.0.1}]}", Accepts),
    (SE, META, "{hosts: [api.example.com], ports: [{number: 80, name: http, protocol: HTTP}], endpoints: [{address: 10.0.0.1}]}", Refuses("no endpoints should be provided for resolution type none")),
    (SE, META, "{hosts: [api.example.com], ports: [{number: 443, name: https, protocol: TLS}], resolution: DNS}", Accepts),
    (SE, META, "{ports: [{number: 80, name: http}]}", Refuses("must have at least one host")),
    (SE, META, "{hosts: ['*'], ports: [{number: 80, name: http}]}", Refuses("invalid host *")),
    (SE, META, "{hosts: ['*foo.com'], ports: [{number: 80, name: http, protocol: HTTP}]}", Warns("partial wildcard")),
    (SE, META, "{hosts: [api.example.com], addresses: [10.0.0.0/16], ports: [{number: 80, name: http}], resolution: DNS}", Refuses("CIDR addresses are allowed only for NONE/STATIC")),
    (SE, META, "{hosts: [api.example.com], addresses: [172.1.2.16/16], ports: [{number: 80, name: http, protocol: HTTP}], resolution: NONE}", Accepts),
    (SE, META, "{hosts: [uds.cluster.local], ports: [{number: 6553, protocol: grpc, name: grpc}], resolution: STATIC, endpoints: [{address: 'unix:///path/to/socket'}]}", Accepts),
    (SE, META, "{hosts: ['*.google.com'], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DYNAMIC_DNS}", Accepts),
    (SE, META, "{hosts: [api.example.com], addresses: [not-an-ip], ports: [{number: 80, name: http}]}", Refuses("is not a valid IP")),
    (SE, META, "{hosts: [api.example.com], ports: [{number: 80, name: a}, {number: 81, name: a}]}", Refuses("port name \"a\" already defined")),
    (SE, META, "{hosts: [api.example.com], ports: [{number: 80, name: a}, {number: 80, name: b}]}", Refuses("port 80 already defined")),
    (SE, META, "{hosts: [api.example.com], ports: [{number: 99999, name: a}]}", Refuses("1..65535")),
    (SE, META, "{hosts: [api.example.com], ports: [{number: 80, name: a, targetPort: 99999}]}", Refuses("1..65535")),
    (SE, META, "{hosts: [api.example.com], ports: [{number: 80, name: Bad_Name}]}", Refuses("invalid port name")),
    (SE, META, "{hosts: [api.example.com], ports: [{number: 80}]}", Refuses("invalid port name")),
    (SE, META, "{hosts: [api.example.com], ports: [{number: 80, name: a, protocol: FOO}]}", Refuses("unsupported protocol")),
    (SE, META, "{hosts: [api.example.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS_ROUND_ROBIN, endpoints: [{address: a.example.com}, {address: b.example.com}]}", Refuses("0 or 1 endpoint")),
    (SE, META, "{hosts: [api.example.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS, endpoints: [{address: a.example.com, ports: {http: 8080}}]}", Accepts),
    (SE, META, "{hosts: [api.example.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS, endpoints: [{address: a.example.com, ports: {grpc: 8080}}]}", Refuses("is not defined by the service entry")),
    (SE, META, "{hosts: ['*.example.com'], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS}", Refuses("hosts must be FQDN")),
    (SE, META, "{hosts: [api.example.com], ports: [{number: 80, name: http}], workloadSelector: {labels: {app: api}}, endpoints: [{address: 10.0.0.1}], resolution: STATIC}", Refuses("only one of WorkloadSelector or Endpoints")),
    (SE, META, "{hosts: [api.example.com], ports: [{number: 80, name: http}], workloadSelector: {labels: {app: '*'}}}", Refuses("wildcard is not supported in selector")),
    (SE, META, "{hosts: [a.example.com, b.example.com], addresses: [240.0.0.2], ports: [{number: 5432, name: tcp, protocol: TCP}], resolution: STATIC, endpoints: [{address: 10.0.0.2}]}", Refuses("multiple hosts provided with non-HTTP, non-TLS ports")),
    (SE, META, "{hosts: [a.example.com, b.example.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS}", Accepts),
    (SE, META, "{hosts: [api.example.com], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: vm.example.com}]}", Refuses("is not a valid IP address")),
    (SE, META, "{hosts: [api.example.com], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: 10.0.0.1, ports: {grpc: 9000}}]}", Refuses("is not defined by the service entry")),
    (SE, META, "{hosts: [api.example.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DYNAMIC_DNS}", Refuses("host must be wildcarded")),
    (SE, META, "{hosts: [api.example.com], ports: [{number: 80, name: http}], resolution: MAGIC}", Refuses("unsupported resolution type")),
    (SE, META, "{hosts: [api.example.com], ports: [{number: 80, name: http, protocol: HTTP}], exportTo: ['~']}", Accepts),
    (SE, META, "{hosts: [api.example.com], ports: [{number: 80, name: http, protocol: HTTP}], exportTo: ['~', '*']}", Refuses("cannot have both public")),
    (SE, META, "{hosts: [api.example.com], ports: [{number: 80, name: http, protocol: HTTP}], location: ELSEWHERE}", Refuses("is not MESH_EXTERNAL or MESH_INTERNAL")),
    (SE, META, "{hosts: [api.example.com], ports: [{number: 80, name: http, protocol: HTTP}], location: MESH_EXTERNAL, subjectAltNames: [spiffe://x]}", Accepts),
];

#[rustfmt::skip]
const WORKLOAD_ENTRIES: &[Row] = &[
    (WE, META, "{address: 10.0.0.5, ports: {http: 8080}, labels: {app: billing}, serviceAccount: billing, weight: 2}", Accepts),
    (WE, META, "{}", Refuses("address is required")),
    (WE, META, "{network: net-2}", Warns("address is unset with network")),
    (WE, META, "{address: 'unix://relative'}", Refuses("not an absolute path")),
    (WE, META, "{address: 'unix:///dir/'}", Refuses("not an absolute path")),
    (WE, META, "{address: 'unix://@foo', ports: {http: 80}}", Refuses("must not include ports")),
    (WE, META, "{address: 'unix:///var/run/app.sock'}", Accepts),
    (WE, META, "{address: 1.1.1.1, ports: {http: 99999}}", Refuses("1..65535")),
    (WE, META, "{address: 1.1.1.1, ports: {'@': 80}}", Refuses("invalid port name")),
    (WE, META, "{address: vm.example.com}", Accepts),
    (WE, META, "{address: 'bad_host!'}", Refuses("not a valid FQDN or an IP address")),
    (WE, META, "{address: 1.1.1.1, labels: {app: '-x'}}", Refuses("invalid tag value")),
];

/// Errors and warnings `interceptor validate` reports for one document.
fn diagnose(kind: &str, meta: &str, spec: &str) -> Vec<Diagnostic> {
    let text = format!("apiVersion: networking.istio.io/v1\nkind: {kind}\nmetadata: {meta}\nspec: {spec}\n");
    let mut snapshot = Snapshot::default();
    let mut errors = Vec::new();
    snapshot.add_file(Path::new("case.yaml"), &text, "default", &mut errors);
    if !errors.is_empty() {
        return errors;
    }
    match RouteTable::compile(&snapshot) {
        Ok(table) => table.warnings().to_vec(),
        Err(err) => err.diagnostics,
    }
}

/// Why a row disagrees with Istio, or `None` when it agrees.
fn disagreement(row: &Row) -> Option<String> {
    let (kind, meta, spec, istio) = *row;
    let found = diagnose(kind, meta, spec);
    let errors: Vec<&Diagnostic> = found.iter().filter(|d| d.severity == Severity::Error).collect();
    let has = |severity: Severity, text: &str| found.iter().any(|d| d.severity == severity && d.message.contains(text));
    let agrees = match istio {
        Accepts => errors.is_empty(),
        Warns(text) => errors.is_empty() && has(Severity::Warning, text),
        Refuses(text) => has(Severity::Error, text),
    };
    (!agrees).then(|| {
        let listed: Vec<String> = found.iter().map(ToString::to_string).collect();
        format!("{kind} {spec}: Istio {istio:?}, we said:\n    {}", listed.join("\n    "))
    })
}

#[test]
fn agrees_with_istio_rule_for_rule() {
    let rows: Vec<&Row> =
        [VIRTUAL_SERVICES, DESTINATION_RULES, SERVICE_ENTRIES, WORKLOAD_ENTRIES].into_iter().flatten().collect();
    let disagreements: Vec<String> = rows.iter().filter_map(|row| disagreement(row)).collect();
    let agreed = rows.len() - disagreements.len();
    println!("agreement with Istio: {agreed}/{} rows ({:.1}%)", rows.len(), 100.0 * agreed as f64 / rows.len() as f64);
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

#[test]
fn accepted_rows_also_compile_and_refused_rows_name_their_resource() {
    for (kind, meta, spec, istio) in [VIRTUAL_SERVICES, DESTINATION_RULES, SERVICE_ENTRIES, WORKLOAD_ENTRIES].concat() {
        let found = diagnose(kind, meta, spec);
        if let Refuses(_) = istio {
            let error = found.iter().find(|d| d.severity == Severity::Error);
            assert!(
                error.is_some_and(|d| d.resource == format!("{kind} default/t") && d.line > 0),
                "{spec}: {found:?}"
            );
        }
    }
}

/// A service with a DestinationRule whose subset `v1` has `tls` as its TLS settings, and a
/// VirtualService routing to that subset.
fn upstream_tls_config(tls: &str) -> Snapshot {
    let text = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  addresses: [10.96.0.20]
  ports: [{{number: 80, name: http}}]
  resolution: STATIC
  endpoints: [{{address: 10.244.0.20, labels: {{version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {{version: v1}}
    trafficPolicy:
      tls: {tls}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http: [{{route: [{{destination: {{host: reviews, subset: v1}}}}]}}]
"
    );
    let mut snapshot = Snapshot::default();
    let mut errors = Vec::new();
    snapshot.add_file(Path::new("tls.yaml"), &text, "default", &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    snapshot
}

#[test]
fn upstream_tls_files_that_do_not_load_are_errors_naming_resource_field_and_file() {
    let cases = [
        ("{mode: SIMPLE, caCertificates: /nonexistent/ca.pem}", "caCertificates", "/nonexistent/ca.pem"),
        (
            "{mode: MUTUAL, clientCertificate: /nonexistent/c.pem, privateKey: /nonexistent/k.pem}",
            "clientCertificate",
            "/nonexistent/c.pem",
        ),
        ("{mode: MUTUAL, credentialName: reviews-client}", "credentialName", "reviews-client"),
    ];
    for (tls, field, file) in cases {
        let err = RouteTable::compile(&upstream_tls_config(tls)).err().unwrap_or_else(|| panic!("{tls}: compiled"));
        let error = err.diagnostics.iter().find(|d| d.severity == Severity::Error).unwrap();
        assert_eq!(error.resource, "DestinationRule default/reviews", "{tls}");
        assert_eq!(error.field, format!("spec.subsets[0].trafficPolicy.tls.{field}"), "{tls}");
        assert!(error.message.contains(file), "{tls}: {error}");
        assert!(error.line > 0, "{tls}: {error}");
    }
}

#[test]
fn the_command_line_warns_about_tls_files_it_cannot_read_where_the_agent_refuses_them() {
    // `validate` runs where the agent's files may not be: Istio's validation reads no files.
    let snapshot = upstream_tls_config("{mode: SIMPLE, caCertificates: /nonexistent/ca.pem}");
    let table = RouteTable::compile_offline(&snapshot).unwrap();
    let warning = table.warnings().iter().find(|w| w.field.ends_with("tls.caCertificates")).unwrap();
    assert_eq!(warning.severity, Severity::Warning);
    assert!(warning.message.contains("/nonexistent/ca.pem") && warning.message.contains("not readable here"));
    assert!(RouteTable::compile(&snapshot).is_err(), "the agent's compile still refuses it");
}

#[test]
fn from_a_cluster_a_rule_whose_files_do_not_load_stays_and_its_cluster_refuses() {
    let snapshot = upstream_tls_config("{mode: SIMPLE, caCertificates: /nonexistent/ca.pem}");
    let states = crate::endpoints::ClusterStates::default();
    let (table, applied, rejected) =
        RouteTable::compile_isolating(snapshot, &states, &crate::tls::Credentials::files("/nonexistent")).unwrap();
    // Left in: leaving it out would send plaintext where TLS was asked for.
    assert_eq!(applied.destination_rules.len(), 1);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(rejected[0].field.ends_with("tls.caCertificates"));
    let cluster = table.clusters().iter().find(|c| c.subset == "v1").unwrap();
    assert!(cluster.tls.refusal().is_some_and(|r| r.contains("/nonexistent/ca.pem")), "{}", cluster.tls);
}

#[test]
fn istio_mutual_is_a_warning_and_a_refusing_cluster() {
    let table = RouteTable::compile(&upstream_tls_config("{mode: ISTIO_MUTUAL}")).unwrap();
    assert!(table
        .warnings()
        .iter()
        .any(|w| w.field == "spec.subsets[0].trafficPolicy.tls.mode"
            && w.message.contains("ISTIO_MUTUAL needs Istio's CA")));
    let cluster = table.clusters().iter().find(|c| c.subset == "v1").unwrap();
    assert!(cluster.tls.refusal().is_some());
}

mod never_panics {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Any text in the fields whose syntax the validator reads ends in a verdict, never a panic.
        #[test]
        fn on_any_text(host in ".{0,40}", regex in ".{0,40}", duration in "[-+0-9.a-zµ ]{0,12}", value in ".{0,30}", number in any::<u64>()) {
            let vs = serde_json::json!({
                "hosts": [host.clone()],
                "http": [{
                    "match": [{"uri": {"regex": regex}, "headers": {value.clone(): {"prefix": value.clone()}}}],
                    "route": [{"destination": {"host": host.clone()}, "weight": number % 1000,
                               "headers": {"request": {"set": {"x-a": value.clone()}}}}],
                    "timeout": duration.clone(),
                    "corsPolicy": {"maxAge": duration.clone(), "allowOrigins": [{"regex": regex}]},
                }],
            });
            diagnose(VS, META, &vs.to_string());
            let dr = serde_json::json!({
                "host": host,
                "trafficPolicy": {
                    "loadBalancer": {"consistentHash": {"maglev": {"tableSize": number}, "useSourceIp": true}},
                    "outlierDetection": {"interval": duration},
                },
            });
            diagnose(DR, META, &dr.to_string());
        }
    }
}
