//! Packet mode's attachments: XDP and TC on exactly the interfaces whose names match the
//! settings' patterns, rescanned on every rtnetlink link change.

use std::{
    collections::BTreeMap,
    io,
    sync::{Arc, Mutex},
};

use aya::{
    programs::{links::FdLink, SchedClassifier, TcAttachType, Xdp, XdpMode},
    Ebpf,
};

use super::{interfaces, links::LinkPins, lock, not_a_link, prog_err, program, BpfError, TC, XDP};

/// Packet mode: keeps XDP and TC attached to exactly the interfaces matching the patterns.
pub(super) struct Follower {
    ebpf: Arc<Mutex<Ebpf>>,
    links: Arc<Mutex<LinkPins>>,
    patterns: Vec<String>,
    /// Interface name → index it was attached at (a re-created interface gets a new index).
    attached: BTreeMap<String, u32>,
}

impl Follower {
    pub(super) fn new(ebpf: Arc<Mutex<Ebpf>>, links: Arc<Mutex<LinkPins>>, patterns: Vec<String>) -> Self {
        Self { ebpf, links, patterns, attached: BTreeMap::new() }
    }

    /// Attaches to matching interfaces not attached yet, detaches from those gone (or re-created).
    pub(super) fn rescan(&mut self) -> io::Result<()> {
        let wanted: BTreeMap<String, u32> = interfaces::list()?
            .into_iter()
            .filter(|(name, _)| self.patterns.iter().any(|p| interfaces::glob_match(p, name)))
            .collect();
        let gone: Vec<String> = self
            .attached
            .iter()
            .filter(|(name, idx)| wanted.get(*name) != Some(*idx))
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            let mut links = lock(&self.links);
            links.unpin(&format!("xdp_{name}"));
            links.unpin(&format!("tc_{name}"));
            self.attached.remove(&name);
            tracing::info!(interface = %name, "interface gone: detached");
        }
        for (name, ifindex) in wanted {
            if self.attached.contains_key(&name) {
                continue;
            }
            match self.attach(&name, ifindex) {
                Ok(()) => {
                    self.attached.insert(name.clone(), ifindex);
                    tracing::info!(interface = %name, ifindex, "interface attached (xdp + tc egress)");
                }
                // It may have vanished again already; the next event rescans.
                Err(err) => tracing::warn!(interface = %name, error = %err, "attaching"),
            }
        }
        Ok(())
    }

    fn attach(&self, name: &str, ifindex: u32) -> Result<(), BpfError> {
        let mut ebpf = lock(&self.ebpf);
        let mut links = lock(&self.links);
        let prog: &mut Xdp = program(&mut ebpf, XDP)?;
        let id = prog.attach_to_if_index(ifindex, XdpMode::Default).map_err(prog_err(XDP, "attaching"))?;
        let link = prog.take_link(id).map_err(prog_err(XDP, "attaching"))?;
        let link = FdLink::try_from(link).map_err(not_a_link(XDP))?;
        links.pin(&format!("xdp_{name}"), link)?;
        let prog: &mut SchedClassifier = program(&mut ebpf, TC)?;
        let id = prog.attach(name, TcAttachType::Egress).map_err(prog_err(TC, "attaching"))?;
        let link = prog.take_link(id).map_err(prog_err(TC, "attaching"))?;
        let link = FdLink::try_from(link).map_err(not_a_link(TC))?;
        links.pin(&format!("tc_{name}"), link)
    }
}
