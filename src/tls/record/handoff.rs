//! The hand-off of a connection's keys from rustls to herald's record layer,
//! checked against the traffic secrets captured during its handshake.

use rustls::{ConnectionTrafficSecrets, ProtocolVersion, ServerConnection, SupportedCipherSuite};
use subtle::ConstantTimeEq;

use super::rx::RxState;
use super::*;

/// Both directions as rustls hands them over.
pub(crate) struct Handoff {
    pub(crate) tx: RecordTx,
    pub(crate) rx: RxState,
}

/// Take the keys of a connection whose handshake is complete, whose outgoing
/// records are all written (a KeyUpdate rustls owes included) and which holds
/// no part of a record received (see [`super::WholeRecords`]); the connection
/// is consumed. On TLS 1.3 the traffic secrets `captured` during its handshake
/// are advanced to the generation of the keys rustls gives (the client may
/// have updated its keys, and rustls its own in answer, before now); none
/// matching is an error.
pub(crate) fn hand_off(conn: ServerConnection, captured: &Captured) -> Result<Handoff, String> {
    let tls13 = conn.protocol_version() == Some(ProtocolVersion::TLSv1_3);
    let suite_limit = match conn.negotiated_cipher_suite() {
        Some(SupportedCipherSuite::Tls13(s)) => s.common.confidentiality_limit,
        Some(SupportedCipherSuite::Tls12(s)) => s.common.confidentiality_limit,
        None => return Err("no cipher suite negotiated".into()),
    };
    let limit = suite_limit.min(test_record_limit().unwrap_or(u64::MAX));
    let secrets = conn
        .dangerous_extract_secrets()
        .map_err(|e| e.to_string())?;
    let (tx_seq, tx) = secrets.tx;
    let (rx_seq, rx) = secrets.rx;
    let aead = Aead::of(&tx).ok_or("unsupported cipher suite")?;
    LIMITS[aead as usize].fetch_min(limit, Ordering::Relaxed);
    let (tx_key, tx_iv) = key_iv(&tx, aead)?;
    let (rx_key, rx_iv) = key_iv(&rx, aead)?;
    let kind = match (tls13, aead) {
        (true, _) => Kind::Tls13,
        (false, Aead::Chacha20Poly1305) => Kind::Tls12ChaCha,
        (false, _) => Kind::Tls12Gcm,
    };
    let (tx_secret, rx_material) = if tls13 {
        (
            generation_of(captured.server(), aead, tx_key, &tx_iv)?,
            generation_of(captured.client(), aead, rx_key, &rx_iv)?,
        )
    } else {
        // No key update exists: no secret is kept; the receiving key itself is
        // (a lean stream makes its ring key from it when input comes).
        let mut m = Material::EMPTY;
        m.0[..rx_key.len()].copy_from_slice(rx_key);
        m.0[rx_key.len()..rx_key.len() + 12].copy_from_slice(&rx_iv);
        (Material::EMPTY, m)
    };
    let tx = RecordTx {
        key: less_safe(aead, tx_key),
        iv: tx_iv,
        seq: tx_seq,
        kind,
        aead,
        update: false,
        secret: tx_secret,
    };
    let rx = RxState {
        material: rx_material,
        seq: rx_seq,
        kind,
        aead,
        idle: 0,
    };
    Ok(Handoff { tx, rx })
}

/// The key (of `aead`'s length) and IV of one direction.
pub(super) fn key_iv(
    secrets: &ConnectionTrafficSecrets,
    aead: Aead,
) -> Result<(&[u8], [u8; 12]), String> {
    let (key, iv) = match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key.as_ref(), iv.as_ref()),
        _ => return Err("unsupported cipher suite".into()),
    };
    if Aead::of(secrets) != Some(aead) || key.len() != aead.key_len() {
        return Err("bad key length".into());
    }
    let iv: [u8; 12] = iv.try_into().map_err(|_| "bad IV length")?;
    Ok((key, iv))
}

/// The generation of the captured traffic secret (generation 0) whose key and
/// IV are `key` and `iv`.
fn generation_of(
    captured: Option<(&Material, usize)>,
    aead: Aead,
    key: &[u8],
    iv: &[u8; 12],
) -> Result<Material, String> {
    let (secret, len) = captured.ok_or("the handshake's traffic secrets were not captured")?;
    if len != aead.secret_len() {
        return Err("a captured traffic secret of the wrong length".into());
    }
    let mut secret = secret.clone();
    for _ in 0..=MAX_GENERATIONS {
        let mut k = Material::EMPTY;
        let i = TrafficSecret {
            aead,
            secret: &secret,
        }
        .key_iv(&mut k);
        if bool::from(k.0[..aead.key_len()].ct_eq(key) & i.ct_eq(iv)) {
            return Ok(secret);
        }
        secret = TrafficSecret {
            aead,
            secret: &secret,
        }
        .next();
    }
    Err("no generation of the captured traffic secret gives rustls' key".into())
}

/// Take both keys of a connection ([`hand_off`]), for a connection that
/// reads and writes records (HTTP/2).
pub fn take_both(
    conn: ServerConnection,
    captured: &Captured,
) -> Result<(Box<RecordTx>, Box<RecordRx>), String> {
    let h = hand_off(conn, captured)?;
    Ok((Box::new(h.tx), Box::new(RecordRx::from_state(h.rx))))
}

/// For the property tests and the fuzz target: a client's sealer and
/// herald's reader of its records, from fixed keys and no handshake, for each
/// kind of record layer herald meets (`which` modulo 5: TLS 1.3 with
/// AES-128-GCM, AES-256-GCM or ChaCha20-Poly1305; TLS 1.2 with AES-128-GCM or
/// ChaCha20-Poly1305). The sealer is a [`RecordTx`] with the client's key:
/// [`RecordTx::seal_raw`] and [`RecordTx::seal_key_update`] send what a client
/// may.
#[doc(hidden)]
pub fn fixed_pair(which: u8) -> (RecordTx, RecordRx) {
    let (state, secret) = fixed_state(which);
    let (key, iv) = state.keys();
    let tx = RecordTx {
        key,
        iv,
        seq: 0,
        kind: state.kind,
        aead: state.aead,
        update: false,
        secret,
    };
    (tx, RecordRx::from_state(state))
}

/// The receiving state of [`fixed_pair`], and the traffic secret its sealer
/// keeps (TLS 1.3).
pub(crate) fn fixed_state(which: u8) -> (RxState, Material) {
    let (kind, aead) = match which % 5 {
        0 => (Kind::Tls13, Aead::Aes128Gcm),
        1 => (Kind::Tls13, Aead::Aes256Gcm),
        2 => (Kind::Tls13, Aead::Chacha20Poly1305),
        3 => (Kind::Tls12Gcm, Aead::Aes128Gcm),
        _ => (Kind::Tls12ChaCha, Aead::Chacha20Poly1305),
    };
    let (material, secret) = match kind {
        Kind::Tls13 => {
            let s = Material::from_slice(&[0x5a; 48][..aead.secret_len()])
                .expect("a secret fits its block");
            (s.clone(), s)
        }
        _ => {
            let n = aead.key_len();
            let mut m = Material::EMPTY;
            m.0[..n].fill(0x5a);
            m.0[n..n + 12].fill(0xa5);
            (m, Material::EMPTY)
        }
    };
    let state = RxState {
        material,
        seq: 0,
        kind,
        aead,
        idle: 0,
    };
    (state, secret)
}
