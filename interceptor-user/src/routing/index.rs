//! A prefilter over one VirtualService's rules: a single pass over the path (exact map, prefix
//! trie, one multi-pattern regex automaton) and a hash lookup per indexed header give the match
//! blocks that can match, so a request is checked against a handful of blocks instead of all.

use std::cell::RefCell;
use std::collections::HashMap;

use http::HeaderName;
use regex_automata::meta::Regex as MultiRegex;
use regex_automata::{Anchored, Input, MatchKind, PatternSet};

use super::matcher::{header_value, Matcher, RequestView};
use super::Rule;

/// Where a block lives: its rule and its position among the rule's blocks (`None` for a rule
/// without blocks, which always matches).
#[derive(Clone, Copy, Debug)]
pub(super) struct BlockRef {
    pub rule: u32,
    pub block: Option<u32>,
}

/// The index of one rule list. Block ids follow rule order, so the lowest candidate that passes
/// its full check is the first match.
#[derive(Debug)]
pub(super) struct RuleIndex {
    blocks: Vec<BlockRef>,
    /// Blocks with no indexed condition: always candidates.
    always: Vec<u64>,
    uri_exact: ValueIndex,
    uri_prefix: Trie,
    uri_regex: Option<(MultiRegex, Vec<u32>)>,
    header_exact: Vec<(HeaderName, ValueIndex)>,
}

/// Exact values → the blocks that require them. foldhash, not SipHash: keys come from config,
/// not from clients, so flooding is not a concern and the lookup is on every request.
type ValueIndex = HashMap<Box<str>, Vec<u32>, foldhash::fast::FixedState>;

/// A byte trie of literal prefixes; each node lists the blocks whose prefix ends there.
#[derive(Debug, Default)]
struct Trie {
    nodes: Vec<TrieNode>,
}

#[derive(Debug, Default)]
struct TrieNode {
    children: Vec<(u8, u32)>,
    blocks: Vec<u32>,
}

impl Trie {
    fn insert(&mut self, key: &[u8], block: u32) {
        if self.nodes.is_empty() {
            self.nodes.push(TrieNode::default());
        }
        let mut at = 0usize;
        for &byte in key {
            at = match self.nodes[at].children.iter().find(|(b, _)| *b == byte) {
                Some((_, next)) => *next as usize,
                None => {
                    let next = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    self.nodes[at].children.push((byte, next as u32));
                    next
                }
            };
        }
        self.nodes[at].blocks.push(block);
    }

    /// Calls `found` for every block whose prefix starts `value`.
    fn prefixes_of(&self, value: &[u8], found: &mut impl FnMut(u32)) {
        let Some(mut node) = self.nodes.first() else { return };
        node.blocks.iter().for_each(|b| found(*b));
        for &byte in value {
            match node.children.iter().find(|(b, _)| *b == byte) {
                Some((_, next)) => node = &self.nodes[*next as usize],
                None => return,
            }
            node.blocks.iter().for_each(|b| found(*b));
        }
    }
}

thread_local! {
    /// Per-thread scratch space, so a decision allocates nothing once warm.
    static SCRATCH: RefCell<(Vec<u64>, Option<PatternSet>)> = const { RefCell::new((Vec::new(), None)) };
}

fn set(bits: &mut [u64], id: u32) {
    bits[id as usize / 64] |= 1 << (id % 64);
}

impl RuleIndex {
    /// Indexes `rules`.
    ///
    /// # Errors
    /// The multi-pattern automaton could not be built (the patterns already parsed one by one,
    /// so this means a size limit).
    pub(super) fn build(rules: &[Rule]) -> Result<Self, String> {
        let mut blocks = Vec::new();
        let mut always = Vec::new();
        let mut uri_exact = ValueIndex::default();
        let mut uri_prefix = Trie::default();
        let mut regex_patterns: Vec<&str> = Vec::new();
        let mut regex_blocks = Vec::new();
        let mut header_exact: Vec<(HeaderName, ValueIndex)> = Vec::new();
        for (r, rule) in rules.iter().enumerate() {
            let rule_id = r as u32;
            if rule.matches.is_empty() {
                always.push(blocks.len() as u32);
                blocks.push(BlockRef { rule: rule_id, block: None });
                continue;
            }
            for (b, block) in rule.matches.iter().enumerate() {
                let id = blocks.len() as u32;
                blocks.push(BlockRef { rule: rule_id, block: Some(b as u32) });
                match block.uri() {
                    Some((Matcher::Exact(v), false)) => uri_exact.entry(v.as_str().into()).or_default().push(id),
                    Some((Matcher::Prefix(v), false)) => uri_prefix.insert(v.as_bytes(), id),
                    // A regex with literal prefixes waits in the trie like a prefix match: the full
                    // check then runs it only for paths that start right.
                    Some((Matcher::Regex(re), _)) => match re.prefixes() {
                        Some(prefixes) => prefixes.iter().for_each(|p| uri_prefix.insert(p, id)),
                        None => {
                            regex_patterns.push(re.as_str());
                            regex_blocks.push(id);
                        }
                    },
                    _ => match block.header_conditions().iter().find(|(_, m)| matches!(m, Matcher::Exact(_))) {
                        Some((name, Matcher::Exact(v))) => {
                            let slot = match header_exact.iter().position(|(n, _)| n == name) {
                                Some(i) => i,
                                None => {
                                    header_exact.push((name.clone(), ValueIndex::default()));
                                    header_exact.len() - 1
                                }
                            };
                            header_exact[slot].1.entry(v.as_str().into()).or_default().push(id);
                        }
                        _ => always.push(id),
                    },
                }
            }
        }
        let uri_regex = if regex_patterns.is_empty() {
            None
        } else {
            let regex = MultiRegex::builder()
                .configure(MultiRegex::config().match_kind(MatchKind::All))
                .build_many(&regex_patterns)
                .map_err(|e| format!("rule index: {e}"))?;
            Some((regex, regex_blocks))
        };
        let words = blocks.len().div_ceil(64);
        let mut always_bits = vec![0u64; words];
        for id in always {
            set(&mut always_bits, id);
        }
        Ok(Self { blocks, always: always_bits, uri_exact, uri_prefix, uri_regex, header_exact })
    }

    /// The first block (in rule order) for which `check` holds among the candidates for `req`.
    pub(super) fn first(&self, req: &RequestView<'_>, mut check: impl FnMut(BlockRef) -> bool) -> Option<BlockRef> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let (bits, patterns) = &mut *scratch;
            bits.clear();
            bits.extend_from_slice(&self.always);
            if let Some(ids) = self.uri_exact.get(req.path) {
                ids.iter().for_each(|id| set(bits, *id));
            }
            self.uri_prefix.prefixes_of(req.path.as_bytes(), &mut |id| set(bits, id));
            if let Some((regex, ids)) = &self.uri_regex {
                let patterns = match patterns {
                    Some(p) if p.capacity() >= regex.pattern_len() => p,
                    _ => patterns.insert(PatternSet::new(regex.pattern_len())),
                };
                patterns.clear();
                regex.which_overlapping_matches(&Input::new(req.path).anchored(Anchored::Yes), patterns);
                patterns.iter().for_each(|p| set(bits, ids[p.as_usize()]));
            }
            for (name, values) in &self.header_exact {
                if let Some(ids) = header_value(req.headers, name).and_then(|v| values.get(v.as_ref())) {
                    ids.iter().for_each(|id| set(bits, *id));
                }
            }
            for (w, word) in bits.iter().enumerate() {
                let mut word = *word;
                while word != 0 {
                    let id = w * 64 + word.trailing_zeros() as usize;
                    word &= word - 1;
                    let block = self.blocks[id];
                    if check(block) {
                        return Some(block);
                    }
                }
            }
            None
        })
    }
}
