//! The replica's view of the node's certificate: it signs records with the node's key and
//! checks other origins' certificates against the cluster CA, through `canopy-net`.

use canopy_kv::{SignatureAlgorithm, Signer};
use canopy_net::{Authority, CertRole, KeyAlgorithm};

/// [`canopy_kv::Credentials`] over the node's [`Authority`].
pub struct NodeCredentials {
    authority: Authority,
    node_id: u64,
}

impl NodeCredentials {
    pub fn new(authority: Authority, node_id: u64) -> NodeCredentials {
        NodeCredentials { authority, node_id }
    }
}

impl canopy_kv::Credentials for NodeCredentials {
    fn node_id(&self) -> u64 {
        self.node_id
    }

    fn certificate(&self) -> &[u8] {
        self.authority.certificate()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.authority.sign(message).map_err(|e| e.to_string())
    }

    fn check_certificate(&self, der: &[u8]) -> Result<Signer, String> {
        let checked = self
            .authority
            .check_certificate(der)
            .map_err(|e| e.to_string())?;
        Ok(Signer {
            node_id: checked.identity.node_id,
            is_client: checked.identity.role == CertRole::Client,
            algorithm: match checked.algorithm {
                KeyAlgorithm::Ed25519 => SignatureAlgorithm::Ed25519,
                KeyAlgorithm::EcdsaP256 => SignatureAlgorithm::EcdsaP256Sha256,
            },
            public_key: checked.public_key,
        })
    }
}
