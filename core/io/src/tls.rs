//! Node identity in TLS: a self-signed certificate carrying the node's Ed25519 key (and, on a member of a
//! mesh network, its membership certificate in an extension), and verifiers that trust a certificate only
//! if its key is pinned in the config or it carries a valid membership of our network. TLS 1.3 only; ALPN
//! `quicether/1`.
//!
//! The verifiers check the key; rustls then checks the handshake signature (CertificateVerify) against the
//! same certificate, which proves the peer holds the private key.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use quicether_proto::certkey::{ed25519_key_of_cert, membership_extension_value, membership_of_cert, MEMBERSHIP_OID};
use quicether_proto::cipher::{self, Cipher};
use quicether_proto::membership::{
    admitted_certificate_holds, read_certificate, Certificate, RevocationSet, MAX_CERTIFICATE_LEN,
};
use quicether_proto::refusals::RefusalLimiter;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, SignatureScheme};

pub const ALPN: &[u8] = b"quicether/1";
/// The name a client asks for; certificates are pinned by key, so the name carries no trust.
pub const SERVER_NAME: &str = "quicether";

/// PKCS#8 v1 wrapper of an Ed25519 seed (RFC 8410): fixed prefix, then the 32-byte seed.
const PKCS8_ED25519_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// The crypto provider of every TLS handshake (paths, lane), its cipher suites in this node's order of
/// preference (`cipher`): a client offers them in that order, and a server without AES instructions insists on
/// its own (`server_tls`), so a pair with a slow-AES end agrees on ChaCha20-Poly1305.
pub fn provider() -> Arc<CryptoProvider> {
    provider_preferring(cipher().0)
}

pub fn provider_preferring(cipher: Cipher) -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    if cipher == Cipher::ChaCha20Poly1305 {
        // Stable: ChaCha20 first, the others (AES-128-GCM among them, which QUIC's Initial packets need) after.
        provider.cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
    }
    Arc::new(provider)
}

/// The cipher this node prefers, and why (`quicether_proto::cipher`): chosen once per process.
pub fn cipher() -> (Cipher, String) {
    static CHOICE: OnceLock<(Cipher, String)> = OnceLock::new();
    CHOICE
        .get_or_init(|| {
            let forced = std::env::var("QUICETHER_CIPHER").ok();
            cipher::choose(aes_instructions(), forced.as_deref()).unwrap_or_else(|e| {
                (cipher::choose(aes_instructions(), None).expect("no override").0, format!("{e}; by the CPU"))
            })
        })
        .clone()
}

/// Whether the CPU runs AES-GCM in hardware (AES and carry-less multiply instructions).
fn aes_instructions() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    return std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull");
    #[allow(unreachable_code)]
    false
}

pub fn generate_seed() -> [u8; 32] {
    use ring::rand::SecureRandom;
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut seed).expect("the OS random source failed");
    seed
}

pub fn public_key_of_seed(seed: &[u8; 32]) -> [u8; 32] {
    use ring::signature::KeyPair;
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed).expect("any 32 bytes are a seed");
    pair.public_key().as_ref().try_into().expect("Ed25519 public keys are 32 bytes")
}

/// A node's key pair and its self-signed certificate.
pub struct Identity {
    pub public_key: [u8; 32],
    pub cert: CertificateDer<'static>,
    pkcs8: Vec<u8>,
}

impl Identity {
    /// The identity of the node with key `seed`; `membership`: its certificate of a mesh network, shown to
    /// every peer in the TLS certificate (unchecked here: the daemon checks it is this node's).
    pub fn from_seed(seed: &[u8; 32], membership: Option<&[u8]>) -> Result<Self, String> {
        let mut pkcs8 = PKCS8_ED25519_PREFIX.to_vec();
        pkcs8.extend_from_slice(seed);
        let der = PrivatePkcs8KeyDer::from(pkcs8.clone());
        let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)
            .map_err(|e| format!("node key: {e}"))?;
        let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(|e| e.to_string())?;
        if let Some(cert) = membership {
            if cert.len() > MAX_CERTIFICATE_LEN {
                return Err(format!("membership certificate: longer than {MAX_CERTIFICATE_LEN} bytes"));
            }
            params
                .custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(&MEMBERSHIP_OID, membership_extension_value(cert)));
        }
        let cert = params.self_signed(&key).map_err(|e| format!("node certificate: {e}"))?;
        Ok(Self { public_key: public_key_of_seed(seed), cert: cert.der().clone(), pkcs8 })
    }

    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pkcs8.clone()))
    }

    fn certified_key(&self) -> Result<Arc<CertifiedKey>, String> {
        let key = provider().key_provider.load_private_key(self.private_key()).map_err(|e| e.to_string())?;
        Ok(Arc::new(CertifiedKey::new(vec![self.cert.clone()], key)))
    }
}

/// The identity a node shows in its handshakes as of now, both as server (every local socket) and as
/// client (every dialer). A renewed membership certificate replaces it (`replace`) for every handshake
/// from then on, with no socket rebuilt and no path dropped.
#[derive(Debug)]
pub struct CurrentIdentity {
    key: RwLock<Arc<CertifiedKey>>,
}

impl CurrentIdentity {
    pub fn new(identity: &Identity) -> Result<Arc<Self>, String> {
        Ok(Arc::new(Self { key: RwLock::new(identity.certified_key()?) }))
    }

    pub fn replace(&self, identity: &Identity) -> Result<(), String> {
        *self.key.write().unwrap() = identity.certified_key()?;
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.key.read().unwrap().clone()
    }
}

impl ResolvesServerCert for CurrentIdentity {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for CurrentIdentity {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn refuse(reason: &str) -> TlsError {
    TlsError::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(Refused(reason.into())))))
}

#[derive(Debug)]
struct Refused(String);
impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Refused {}

/// The handshake-signature half of both verifiers (they differ only in which keys they accept): TLS 1.3
/// only, Ed25519 only, checked with the crypto provider in `self.provider`.
macro_rules! handshake_signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            Err(TlsError::General("TLS 1.2 is not used by QuicEther".into()))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }
    };
}

/// Client side: the server must present exactly the key configured for that peer and, with `members_of`
/// (a peer whose key came from an unauthenticated LAN announcement), a valid membership of our network.
pub struct PinnedServerKey {
    pub key: [u8; 32],
    members_of: Option<SharedTrust>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PinnedServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedServerKey").finish_non_exhaustive()
    }
}

impl PinnedServerKey {
    pub fn new(key: [u8; 32], provider: Arc<CryptoProvider>) -> Self {
        Self { key, members_of: None, provider }
    }

    /// Also requires a valid membership of the network in `trust`.
    pub fn member_of(self, trust: SharedTrust) -> Self {
        Self { members_of: Some(trust), ..self }
    }
}

impl ServerCertVerifier for PinnedServerKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match ed25519_key_of_cert(end_entity) {
            Some(k) if k == self.key => match &self.members_of {
                Some(trust) => member_of(trust, end_entity, &k, now.as_secs())
                    .map(|_| ServerCertVerified::assertion())
                    .map_err(|reason| refuse(&reason)),
                None => Ok(ServerCertVerified::assertion()),
            },
            Some(_) => Err(refuse("peer presented a different node key than configured")),
            None => Err(refuse("peer certificate carries no Ed25519 node key")),
        }
    }

    handshake_signature_checks!();
}

/// The mesh network this node is a member of: a valid certificate of it admits a peer with no configured
/// key; a revoked member is refused even while its certificate is valid.
pub struct NetworkTrust {
    pub network_key: [u8; 32],
    pub revocations: RevocationSet,
}

/// Shared between the verifier and the accept loop; None: the node is in no network (pinned keys only).
pub type SharedTrust = Arc<RwLock<Option<NetworkTrust>>>;

/// The membership a peer's TLS certificate `der` (node key `key`) shows, checked against our network at
/// `now` (Unix seconds): signed by the network key, valid now, not revoked, and issued to this very key (a
/// copied certificate is useless without the private key, which the TLS handshake proves).
pub fn member_of(trust: &SharedTrust, der: &[u8], key: &[u8; 32], now: u64) -> Result<Certificate, String> {
    if trust.read().unwrap().is_none() {
        return Err("unknown node key".into());
    }
    let Some(data) = membership_of_cert(der) else {
        return Err("unknown node key, and no membership certificate".into());
    };
    check_membership(trust, data, key, now)
}

/// Checks membership certificate `data` of node `key` against our network at `now` (see `member_of`).
pub fn check_membership(trust: &SharedTrust, data: &[u8], key: &[u8; 32], now: u64) -> Result<Certificate, String> {
    let guard = trust.read().unwrap();
    let Some(trust) = guard.as_ref() else {
        return Err("this node is in no network".into());
    };
    let cert = read_certificate(data, &trust.network_key, now, &trust.revocations)
        .map_err(|e| format!("membership certificate refused: {e}"))?;
    if &cert.node != key {
        return Err("membership certificate refused: issued to another node key".into());
    }
    Ok(cert)
}

/// `check_membership` for a member admitted earlier (the periodic recheck): a certificate "not yet valid"
/// by our clock still holds, as our clock stepped back since (`admitted_certificate_holds`).
pub fn membership_still_holds(
    trust: &SharedTrust,
    data: &[u8],
    key: &[u8; 32],
    now: u64,
) -> Result<Certificate, String> {
    let guard = trust.read().unwrap();
    let Some(trust) = guard.as_ref() else {
        return Err("this node is in no network".into());
    };
    let cert = admitted_certificate_holds(data, &trust.network_key, now, &trust.revocations)
        .map_err(|e| format!("membership certificate refused: {e}"))?;
    if &cert.node != key {
        return Err("membership certificate refused: issued to another node key".into());
    }
    Ok(cert)
}

/// The certificate a connection's peer presented in its handshake.
pub fn peer_certificate(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let identity = conn.peer_identity()?;
    identity.downcast_ref::<Vec<CertificateDer<'static>>>()?.first().cloned()
}

/// The client side's QUIC crypto: shows `identity`, pins the server's key `server_key` (and with
/// `members_of`, requires its membership of that network), TLS 1.3, our ALPN, no resumption (a resumed
/// handshake would skip the peer's checks of us).
pub fn quic_client_config(
    identity: Arc<CurrentIdentity>,
    server_key: [u8; 32],
    members_of: Option<SharedTrust>,
) -> Result<QuicClientConfig, String> {
    QuicClientConfig::try_from(client_tls(identity, server_key, members_of, ALPN)?).map_err(|e| e.to_string())
}

/// The client side's TLS for any of our protocols (`alpn`: QUIC paths, the TCP lane): shows `identity`, pins
/// the server's key (and with `members_of`, its membership), TLS 1.3, no resumption.
pub fn client_tls(
    identity: Arc<CurrentIdentity>,
    server_key: [u8; 32],
    members_of: Option<SharedTrust>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let verifier = PinnedServerKey::new(server_key, provider.clone());
    let verifier = match members_of {
        Some(trust) => verifier.member_of(trust),
        None => verifier,
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(identity);
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    Ok(tls)
}

/// The server side's TLS for any of our protocols: clients are checked by `verifier`, TLS 1.3, `alpn`. No
/// session resumption: a resumed handshake skips the client-certificate check, so a peer removed from the
/// pinning set could come back with a ticket from before.
pub fn server_tls(
    verifier: Arc<KnownClientKeys>,
    identity: Arc<CurrentIdentity>,
    alpn: &[u8],
) -> Result<rustls::ServerConfig, String> {
    let mut tls = rustls::ServerConfig::builder_with_provider(verifier.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity);
    tls.alpn_protocols = vec![alpn.to_vec()];
    // A server that prefers ChaCha20 (no AES instructions) picks by its own order, not the client's.
    tls.ignore_client_order = tls.crypto_provider().cipher_suites.first().map(|s| s.suite())
        == Some(rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(tls)
}

/// Called with the refused key (None if the certificate had none) and the reason.
pub type RefusalSink = Box<dyn Fn(Option<[u8; 32]>, &str) + Send + Sync>;

/// Server side: a client is accepted only if its key is one of the configured peers, or it shows a valid
/// membership of our network (`member_of`). Every refusal is counted; reports are rate-limited with
/// bounded memory (`quicether_proto::refusals`): a misconfigured peer retries every second and anyone can
/// make up fresh keys, and neither may flood the log.
pub struct KnownClientKeys {
    keys: Arc<RwLock<HashSet<[u8; 32]>>>,
    /// Pending invites' one-time keys: a handshake with one is a join request, never a path (`join.rs`).
    invites: Arc<RwLock<HashSet<[u8; 32]>>>,
    trust: SharedTrust,
    refusals: Mutex<RefusalLimiter<Option<[u8; 32]>>>,
    epoch: Instant,
    on_refused: RefusalSink,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for KnownClientKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KnownClientKeys").finish_non_exhaustive()
    }
}

impl KnownClientKeys {
    pub fn new(
        keys: Arc<RwLock<HashSet<[u8; 32]>>>,
        trust: SharedTrust,
        provider: Arc<CryptoProvider>,
        on_refused: RefusalSink,
    ) -> Self {
        let refusals = Mutex::new(RefusalLimiter::default());
        let invites = Arc::default();
        Self { keys, invites, trust, refusals, epoch: Instant::now(), on_refused, provider }
    }

    /// Also accepts the keys in `invites` (the admin's pending invites).
    pub fn with_invites(self, invites: Arc<RwLock<HashSet<[u8; 32]>>>) -> Self {
        Self { invites, ..self }
    }

    fn refuse_limited(&self, key: Option<[u8; 32]>, reason: &str) -> TlsError {
        let now_us = self.epoch.elapsed().as_micros() as u64;
        if self.refusals.lock().unwrap().on_refused(key, now_us) {
            (self.on_refused)(key, reason);
        }
        refuse(reason)
    }

    /// Handshakes refused so far, reported or not.
    pub fn refused(&self) -> u64 {
        self.refusals.lock().unwrap().refused
    }

    /// The key was just unpinned: its next refusal is news, report it (within the overall rate limit).
    pub fn forget_reported(&self, key: &[u8; 32]) {
        self.refusals.lock().unwrap().forget(&Some(*key));
    }
}

impl ClientCertVerifier for KnownClientKeys {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        match ed25519_key_of_cert(end_entity) {
            Some(k) if self.keys.read().unwrap().contains(&k) || self.invites.read().unwrap().contains(&k) => {
                Ok(ClientCertVerified::assertion())
            }
            Some(k) => match member_of(&self.trust, end_entity, &k, now.as_secs()) {
                Ok(_) => Ok(ClientCertVerified::assertion()),
                Err(reason) => Err(self.refuse_limited(Some(k), &reason)),
            },
            None => Err(self.refuse_limited(None, "certificate carries no Ed25519 node key")),
        }
    }

    handshake_signature_checks!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_network() -> SharedTrust {
        Arc::new(RwLock::new(None))
    }

    #[test]
    fn certificate_carries_the_node_key() {
        let seed = generate_seed();
        let id = Identity::from_seed(&seed, None).unwrap();
        assert_eq!(ed25519_key_of_cert(&id.cert), Some(id.public_key));
        assert_eq!(id.public_key, public_key_of_seed(&seed));
    }

    #[test]
    fn pinned_server_key_refuses_another_key() {
        let a = Identity::from_seed(&generate_seed(), None).unwrap();
        let b = Identity::from_seed(&generate_seed(), None).unwrap();
        let v = PinnedServerKey::new(a.public_key, provider());
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        assert!(v.verify_server_cert(&a.cert, &[], &name, &[], UnixTime::now()).is_ok());
        assert!(v.verify_server_cert(&b.cert, &[], &name, &[], UnixTime::now()).is_err());
    }

    #[test]
    fn unknown_client_refused_counted_and_reported_once() {
        let known = Identity::from_seed(&generate_seed(), None).unwrap();
        let stranger = Identity::from_seed(&generate_seed(), None).unwrap();
        let keys = Arc::new(RwLock::new(HashSet::from([known.public_key])));
        let reports = Arc::new(Mutex::new(Vec::new()));
        let sink = reports.clone();
        let v =
            KnownClientKeys::new(keys, no_network(), provider(), Box::new(move |k, _| sink.lock().unwrap().push(k)));
        assert!(v.verify_client_cert(&known.cert, &[], UnixTime::now()).is_ok());
        for _ in 0..3 {
            assert!(v.verify_client_cert(&stranger.cert, &[], UnixTime::now()).is_err());
        }
        assert_eq!(*reports.lock().unwrap(), vec![Some(stranger.public_key)]);
        assert_eq!(v.refused(), 3);
    }

    #[test]
    fn a_flood_of_fresh_keys_costs_a_counter_not_a_report_each() {
        let keys = Arc::new(RwLock::new(HashSet::new()));
        let reports = Arc::new(Mutex::new(0u32));
        let sink = reports.clone();
        let v = KnownClientKeys::new(keys, no_network(), provider(), Box::new(move |_, _| *sink.lock().unwrap() += 1));
        for _ in 0..40 {
            let stranger = Identity::from_seed(&generate_seed(), None).unwrap();
            assert!(v.verify_client_cert(&stranger.cert, &[], UnixTime::now()).is_err());
        }
        assert_eq!(v.refused(), 40);
        // 40 fresh keys within well under a second: at most the per-second limit reported (two seconds'
        // worth, should the loop straddle a second boundary).
        let reported = *reports.lock().unwrap();
        assert!((1..=2 * quicether_proto::refusals::MAX_REPORTS_PER_SEC).contains(&reported), "{reported}");
        assert!(v.refusals.lock().unwrap().remembered() <= quicether_proto::refusals::MAX_REMEMBERED);
    }

    const NET_SEED: [u8; 32] = [7; 32];
    const NOW: u64 = 1_800_000_000;

    fn membership(node: [u8; 32], network_seed: &[u8; 32], not_after: u64) -> Vec<u8> {
        Certificate {
            network: [0; 32],
            node,
            not_before: NOW - 60,
            not_after,
            ipv4: std::net::Ipv4Addr::new(100, 64, 0, 7),
            overlay: (std::net::Ipv4Addr::new(100, 64, 0, 0), 16),
            exit: false,
            name: "site-a".into(),
            groups: vec![],
            lan_prefixes: vec!["192.168.50.0/24".parse().unwrap()],
        }
        .issue(network_seed)
        .unwrap()
    }

    fn member_identity(network_seed: &[u8; 32], not_after: u64) -> (Identity, Vec<u8>) {
        let seed = generate_seed();
        let cert = membership(public_key_of_seed(&seed), network_seed, not_after);
        (Identity::from_seed(&seed, Some(&cert)).unwrap(), cert)
    }

    fn our_network() -> SharedTrust {
        let network_key = quicether_proto::signing::public_key(&NET_SEED);
        Arc::new(RwLock::new(Some(NetworkTrust { network_key, revocations: RevocationSet::default() })))
    }

    fn verifier(trust: SharedTrust) -> KnownClientKeys {
        KnownClientKeys::new(Arc::new(RwLock::new(HashSet::new())), trust, provider(), Box::new(|_, _| {}))
    }

    fn at(now: u64) -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(now))
    }

    #[test]
    fn a_replaced_identity_is_what_every_next_handshake_shows() {
        let seed = generate_seed();
        let old = membership(public_key_of_seed(&seed), &NET_SEED, NOW + 60);
        let renewed = membership(public_key_of_seed(&seed), &NET_SEED, NOW + 3600);
        let current = CurrentIdentity::new(&Identity::from_seed(&seed, Some(&old)).unwrap()).unwrap();
        let shown = |c: &CurrentIdentity| membership_of_cert(c.current().cert[0].as_ref()).unwrap().to_vec();
        assert_eq!(shown(&current), old);
        current.replace(&Identity::from_seed(&seed, Some(&renewed)).unwrap()).unwrap();
        assert_eq!(shown(&current), renewed);
        assert_eq!(ed25519_key_of_cert(current.current().cert[0].as_ref()), Some(public_key_of_seed(&seed)));
    }

    #[test]
    fn the_membership_extension_carries_the_certificate_and_the_node_key_stays_the_subjects() {
        let (id, cert) = member_identity(&NET_SEED, NOW + 3600);
        assert_eq!(membership_of_cert(&id.cert), Some(cert.as_slice()));
        assert_eq!(ed25519_key_of_cert(&id.cert), Some(id.public_key));
        let plain = Identity::from_seed(&generate_seed(), None).unwrap();
        assert_eq!(membership_of_cert(&plain.cert), None);
    }

    #[test]
    fn a_server_of_an_announced_key_must_also_show_our_membership() {
        let (member, _) = member_identity(&NET_SEED, NOW + 3600);
        let (foreign, _) = member_identity(&[9; 32], NOW + 3600);
        let plain = Identity::from_seed(&generate_seed(), None).unwrap();
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        let check = |id: &Identity| {
            PinnedServerKey::new(id.public_key, provider()).member_of(our_network()).verify_server_cert(
                &id.cert,
                &[],
                &name,
                &[],
                at(NOW),
            )
        };
        assert!(check(&member).is_ok());
        assert!(check(&foreign).is_err() && check(&plain).is_err());
        assert!(PinnedServerKey::new(plain.public_key, provider())
            .verify_server_cert(&plain.cert, &[], &name, &[], at(NOW))
            .is_ok());
    }

    #[test]
    fn a_member_of_our_network_is_accepted_without_a_pinned_key() {
        let (id, _) = member_identity(&NET_SEED, NOW + 3600);
        let v = verifier(our_network());
        assert!(v.verify_client_cert(&id.cert, &[], at(NOW)).is_ok());
        let got = member_of(&our_network(), &id.cert, &id.public_key, NOW).unwrap();
        assert_eq!(got.name, "site-a");
    }

    #[test]
    fn foreign_expired_revoked_copied_and_networkless_memberships_are_refused() {
        let trust = our_network();
        let v = verifier(trust.clone());
        let refused = |id: &Identity, now: u64| {
            let err = v.verify_client_cert(&id.cert, &[], at(now)).unwrap_err();
            member_of(&trust, &id.cert, &id.public_key, now).unwrap_err() + &format!(" / {err}")
        };
        let (foreign, _) = member_identity(&[9; 32], NOW + 3600);
        assert!(refused(&foreign, NOW).contains("foreign network"));
        let (expiring, _) = member_identity(&NET_SEED, NOW + 3600);
        assert!(refused(&expiring, NOW + 7 * 86_400).contains("expired"));
        // Another node's certificate in our own TLS certificate.
        let victim = public_key_of_seed(&generate_seed());
        let copied = Identity::from_seed(&generate_seed(), Some(&membership(victim, &NET_SEED, NOW + 3600))).unwrap();
        assert!(refused(&copied, NOW).contains("another node key"));
        let (revoked, _) = member_identity(&NET_SEED, NOW + 3600);
        let revocation = quicether_proto::membership::Revocation {
            network: [0; 32],
            node: revoked.public_key,
            revoked_at: NOW,
            sequence: 1,
        }
        .issue(&NET_SEED);
        let network_key = quicether_proto::signing::public_key(&NET_SEED);
        let rev = quicether_proto::membership::read_revocation(&revocation, &network_key).unwrap();
        trust.write().unwrap().as_mut().unwrap().revocations.insert(rev);
        assert!(refused(&revoked, NOW).contains("revoked"));
        let v = verifier(no_network());
        let (member, _) = member_identity(&NET_SEED, NOW + 3600);
        assert!(
            v.verify_client_cert(&member.cert, &[], at(NOW)).is_err(),
            "a node in no network trusts pinned keys only"
        );
        assert_eq!(v.refused(), 1);
    }
}
