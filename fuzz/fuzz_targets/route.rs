//! Fuzz target (differential): arbitrary match rules and requests; the route table's decision
//! must be the naive reading's (`interceptor::fuzzing::naive_route`, shared with the property test).
#![no_main]

use arbitrary::Arbitrary;
use interceptor::config::{HttpMatchRequest, StringMatch};
use interceptor::fuzzing::{route, RouteRequest};

/// Characters of rule literals: few, so that rules and requests meet; case pairs for
/// `ignoreUriCase`, and non-ASCII ones whose lower case is another character (`É`, the Kelvin sign).
const RULE_CHARS: [char; 10] = ['/', 'a', 'b', 'A', 'B', '.', '-', 'k', 'É', '\u{212A}'];
/// Characters of request paths and header values: what a client can send (ASCII).
const REQUEST_CHARS: [char; 9] = ['/', 'a', 'b', 'A', 'B', '.', '-', 'k', 'K'];
const HEADERS: [&str; 3] = ["x-a", "x-b", "x-c"];
const METHODS: [&str; 4] = ["GET", "POST", "get", "PUT"];
/// Bounds that keep one input quick to decide (the compile dominates).
const MAX_TEXT: usize = 6;
const MAX_RULES: usize = 8;
const MAX_BLOCKS: usize = 3;
const MAX_FIELDS: usize = 2;
const MAX_REQUESTS: usize = 8;

#[derive(Arbitrary, Debug)]
struct Text(Vec<u8>);

impl Text {
    fn render(&self, chars: &[char]) -> String {
        self.0.iter().take(MAX_TEXT).map(|b| chars[usize::from(*b) % chars.len()]).collect()
    }
}

/// One piece of a regex; any sequence of them is valid syntax.
#[derive(Arbitrary, Debug)]
enum Piece {
    Literal(Text),
    Dot,
    DotStar,
    /// A class of the rule characters the bits pick.
    Class(u16),
    Optional(Text),
    Either(Text, Text),
    Plus(Text),
    CaseInsensitive(Text),
}

fn escaped(text: &str) -> String {
    text.chars().flat_map(|c| if ".+*?()|[]{}^$\\-".contains(c) { vec!['\\', c] } else { vec![c] }).collect()
}

impl Piece {
    fn render(&self) -> String {
        let lit = |t: &Text| escaped(&t.render(&RULE_CHARS));
        match self {
            Piece::Literal(t) => lit(t),
            Piece::Dot => ".".into(),
            Piece::DotStar => ".*".into(),
            Piece::Class(bits) => {
                let picked: String =
                    RULE_CHARS.iter().enumerate().filter(|(i, _)| bits >> i & 1 == 1).map(|(_, c)| *c).collect();
                format!("[{}]", if picked.is_empty() { "a".into() } else { escaped(&picked) })
            }
            Piece::Optional(t) => format!("(?:{})?", lit(t)),
            Piece::Either(a, b) => format!("(?:{}|{})", lit(a), lit(b)),
            Piece::Plus(t) => format!("(?:{})+", lit(t)),
            Piece::CaseInsensitive(t) => format!("(?i:{})", lit(t)),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Match {
    Exact(Text),
    Prefix(Text),
    Regex(Vec<Piece>),
    /// `{}`: present.
    Present,
    /// `regex: "*"`: Istio's "present" for headers.
    Star,
}

impl Match {
    fn render(&self) -> StringMatch {
        let some = |t: &Text| Some(t.render(&RULE_CHARS));
        match self {
            Match::Exact(t) => StringMatch { exact: some(t), ..Default::default() },
            Match::Prefix(t) => StringMatch { prefix: some(t), ..Default::default() },
            Match::Regex(pieces) => {
                StringMatch { regex: Some(pieces.iter().take(4).map(Piece::render).collect()), ..Default::default() }
            }
            Match::Present => StringMatch::default(),
            Match::Star => StringMatch { regex: Some("*".into()), ..Default::default() },
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Block {
    uri: Option<Match>,
    ignore_uri_case: bool,
    method: Option<u8>,
    headers: Vec<(u8, Match)>,
    without_headers: Vec<(u8, Match)>,
}

impl Block {
    fn render(&self) -> HttpMatchRequest {
        let fields = |list: &[(u8, Match)]| {
            list.iter()
                .take(MAX_FIELDS)
                .map(|(name, m)| (HEADERS[usize::from(*name) % HEADERS.len()].to_owned(), m.render()))
                .collect()
        };
        HttpMatchRequest {
            uri: self.uri.as_ref().map(Match::render),
            ignore_uri_case: self.ignore_uri_case,
            method: self.method.map(|m| StringMatch {
                exact: Some(METHODS[usize::from(m) % METHODS.len()].to_owned()),
                ..Default::default()
            }),
            headers: fields(&self.headers),
            without_headers: fields(&self.without_headers),
            ..Default::default()
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Request {
    path: Text,
    method: u8,
    headers: Vec<(u8, Text)>,
}

impl Request {
    fn render(&self) -> RouteRequest {
        RouteRequest {
            path: format!("/{}", self.path.render(&REQUEST_CHARS)),
            method: METHODS[usize::from(self.method) % METHODS.len()].to_owned(),
            headers: self
                .headers
                .iter()
                .take(4)
                .map(|(name, value)| {
                    (HEADERS[usize::from(*name) % HEADERS.len()].to_owned(), value.render(&REQUEST_CHARS))
                })
                .collect(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    rules: Vec<Vec<Block>>,
    requests: Vec<Request>,
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    let rules: Vec<Vec<HttpMatchRequest>> = input
        .rules
        .iter()
        .take(MAX_RULES)
        .map(|blocks| blocks.iter().take(MAX_BLOCKS).map(Block::render).collect())
        .collect();
    let requests: Vec<RouteRequest> = input.requests.iter().take(MAX_REQUESTS).map(Request::render).collect();
    if !rules.is_empty() && !requests.is_empty() {
        route(&rules, &requests);
    }
});
