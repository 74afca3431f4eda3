//! What the machine says about its network devices at one moment: the
//! facts a configuration is validated against.

use std::collections::HashMap;

use anyhow::{Context as _, Result};

use crate::netlink::{LinkFacts, Netlink, netdev};

#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub links: Vec<LinkFacts>,
    /// `NETDEV_XDP_ACT_*` bits by ifindex; empty before Linux 6.3.
    pub xdp_features: HashMap<u32, u64>,
}

impl Facts {
    /// Reads every link and its XDP features.
    ///
    /// # Errors
    /// If netlink fails.
    pub async fn gather(netlink: &Netlink) -> Result<Self> {
        Ok(Self {
            links: netlink.links().await.context("listing network devices")?,
            xdp_features: netdev::features().context("reading drivers' XDP features")?,
        })
    }

    #[must_use]
    pub fn link(&self, name: &str) -> Option<&LinkFacts> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The XDP features of the device named `name`, if the kernel says.
    #[must_use]
    pub fn xdp_features(&self, name: &str) -> Option<u64> {
        self.link(name)
            .and_then(|l| self.xdp_features.get(&l.ifindex).copied())
    }
}
