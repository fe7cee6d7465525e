//! The control socket: newline-delimited JSON requests and replies, one object per line.
//!
//! Commands (`"cmd"` field): `stats` (with `--translation-socket`, the service's counters
//! under `translation`), `dump`, `translate` (endpoint, optional pasid, iova,
//! optional len, access `read`/`write`), `dma-read` (endpoint, optional pasid, iova, len ≤ 1 MiB;
//! returns hex `data`), `dma-write` (endpoint, optional pasid, iova, hex `data`). The DMA
//! commands take optional booleans `privileged` and `exec` (exec: reads only). Numbers may
//! be JSON numbers or `"0x…"` strings. Replies carry `"ok": true` or `"ok": false` with
//! `"error"`, or for a translation fault `"fault"` (the record also queued for the guest).
//!
//! At most `--max-control-clients` clients are served at once (one thread each); a client past
//! that gets one error line and is closed, so a flood of connections costs no threads.
//!
//! A DMA that hits a recoverable stage-1 fault waits for the guest's page response like a
//! device with PRI: the client thread parks it in the engine, releases the engine lock (the
//! queue thread needs it to deliver the page request and to process PAGE_RESP), wakes the
//! queue thread, and polls the engine every millisecond. The engine's deadline makes the wait
//! end even if the guest never answers (the device then completes the group with FAILURE).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};
use serde_json::{json, Value};
use virtio_iommu_spec::event::FaultFlags;
use virtio_iommu_spec::{FaultEvent, FaultReason};
use vmm_sys_util::eventfd::EventFd;

use crate::backend::{lock, SharedEngine};
use crate::engine::{Access, DmaAttrs, DmaOp, DmaOutcome, DmaRequest};
use crate::error::{Error, Result};
use crate::limited;
use crate::translation::Hub;

/// Largest DMA a control command may ask for.
const MAX_DMA: u64 = 1 << 20;
/// Longest request line accepted.
const MAX_LINE: u64 = 4 << 20;
/// How often a DMA waiting for a page response looks at the engine.
const DMA_POLL: Duration = Duration::from_millis(1);
/// Pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Where the control socket finds the current connection's wake-up eventfd.
pub type WakeSlot = Arc<Mutex<Option<Arc<EventFd>>>>;

/// Binds the control socket and serves it from a thread for the life of the process.
///
/// # Errors
/// The socket cannot be bound.
/// At most `max_clients` clients are served at once; each holds a thread and up to
/// [`MAX_LINE`] of buffer.
///
/// # Errors
/// The socket cannot be bound.
pub fn spawn(
    path: &Path,
    max_clients: usize,
    engine: SharedEngine,
    wake: WakeSlot,
    translation: Option<Arc<Hub>>,
) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|err| Error::ControlSocket {
        path: path.to_owned(),
        err,
    })?;
    info!("control socket on {}", path.display());
    thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let active = Arc::new(AtomicUsize::new(0));
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        let Some(slot) = ClientSlot::claim(&active, max_clients) else {
                            refuse(&stream, max_clients);
                            continue;
                        };
                        let (v, w, t) = (engine.clone(), wake.clone(), translation.clone());
                        // The slot is released when the thread ends, or here if it cannot start.
                        let _ =
                            thread::Builder::new()
                                .name("control-client".into())
                                .spawn(move || {
                                    let _slot = slot;
                                    serve_client(stream, &v, &w, t.as_deref());
                                });
                    }
                    Err(e) => {
                        // E.g. EMFILE: the error repeats until an fd is freed; do not spin.
                        limited!(Warn, "control socket accept: {e}");
                        thread::sleep(ACCEPT_BACKOFF);
                    }
                }
            }
        })?;
    Ok(())
}

/// One of the `max_clients` places; released on drop.
struct ClientSlot(Arc<AtomicUsize>);

impl ClientSlot {
    fn claim(active: &Arc<AtomicUsize>, max_clients: usize) -> Option<Self> {
        active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max_clients).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(Arc::clone(active)))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Tells a client past `max_clients` why it is closed. Never blocks: the line goes into the
/// empty send buffer of a fresh connection or is dropped.
fn refuse(mut stream: &UnixStream, max_clients: usize) {
    limited!(
        Warn,
        "control socket: {max_clients} clients already connected, refusing one more"
    );
    let mut line =
        json!({"ok": false, "error": format!("too many control clients (at most {max_clients})")})
            .to_string();
    line.push('\n');
    let _ = stream.set_nonblocking(true);
    let _ = stream.write_all(line.as_bytes());
}

fn serve_client(
    stream: UnixStream,
    engine: &SharedEngine,
    wake: &WakeSlot,
    translation: Option<&Hub>,
) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(std::io::Read::take(stream, u64::MAX));
    let mut line = String::new();
    loop {
        line.clear();
        reader.get_mut().set_limit(MAX_LINE);
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let reply = match serde_json::from_str::<Value>(&line) {
            Ok(req) => handle(&req, engine, wake, translation),
            Err(e) => json!({"ok": false, "error": format!("bad JSON: {e}")}),
        };
        let mut text = reply.to_string();
        text.push('\n');
        if out.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}

fn num(req: &Value, key: &str) -> std::result::Result<Option<u64>, String> {
    match req.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("`{key}` must be a u64")),
        Some(Value::String(s)) => crate::args::parse_u64(s).map(Some),
        Some(_) => Err(format!("`{key}` must be a number")),
    }
}

fn need(req: &Value, key: &str) -> std::result::Result<u64, String> {
    num(req, key)?.ok_or_else(|| format!("missing `{key}`"))
}

fn u32_field(req: &Value, key: &str) -> std::result::Result<Option<u32>, String> {
    num(req, key)?
        .map(|v| u32::try_from(v).map_err(|_| format!("`{key}` must fit in 32 bits")))
        .transpose()
}

fn fault_json(f: &FaultEvent) -> Value {
    json!({
        "reason": format!("{:?}", f.reason).to_lowercase(),
        "flags": f.access.bits(),
        "endpoint": f.endpoint,
        "address": f.address,
        "pasid": f.pasid,
    })
}

fn hex(data: &[u8]) -> String {
    use std::fmt::Write as _;
    data.iter()
        .fold(String::with_capacity(data.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn unhex(s: &str) -> std::result::Result<Vec<u8>, String> {
    if s.len() % 2 != 0 {
        return Err("`data` must have an even number of hex digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "`data` is not hex".to_string())
        })
        .collect()
}

/// Answers one request.
#[must_use]
pub fn handle(
    req: &Value,
    engine: &SharedEngine,
    wake: &WakeSlot,
    translation: Option<&Hub>,
) -> Value {
    match dispatch(req, engine, wake, translation) {
        Ok(reply) => {
            if reply.get("fault").is_some() {
                // A fault record was queued: let the queue thread deliver it.
                wake_queue(wake);
            }
            reply
        }
        Err(e) => json!({"ok": false, "error": e}),
    }
}

/// Makes the queue thread deliver what the engine queued.
fn wake_queue(wake: &WakeSlot) {
    if let Some(w) = wake
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
    {
        let _ = w.write(1);
    }
}

/// Runs a DMA to completion: parks it on page requests and waits without the engine lock.
/// Terminates: each wait ends by the engine's page-request deadline at the latest, and the
/// engine bounds the page requests per page and the DMA length is bounded.
pub fn blocking_dma(engine: &SharedEngine, wake: &WakeSlot, req: DmaRequest) -> DmaOutcome {
    let mut out = lock(engine).device_dma().start(req, Instant::now());
    let mut woken_for = None;
    loop {
        let DmaOutcome::Pending(ticket) = out else {
            return out;
        };
        if woken_for != Some(ticket) {
            // A new page request was queued: the queue thread must deliver it.
            wake_queue(wake);
            woken_for = Some(ticket);
        }
        thread::sleep(DMA_POLL);
        let next = lock(engine).device_dma().resume(ticket, Instant::now());
        // `None` cannot happen (only this thread resumes or cancels its ticket); treat it as
        // an unknown fault rather than waiting forever.
        out = next.unwrap_or_else(|| {
            warn!("parked DMA {ticket:?} disappeared from the engine");
            DmaOutcome::Fault(FaultEvent {
                reason: FaultReason::Unknown,
                access: FaultFlags::empty(),
                endpoint: 0,
                address: None,
                pasid: None,
            })
        });
    }
}

fn attrs(req: &Value) -> std::result::Result<DmaAttrs, String> {
    let flag = |key: &str| match req.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("`{key}` must be a boolean")),
    };
    Ok(DmaAttrs {
        privileged: flag("privileged")?,
        exec: flag("exec")?,
    })
}

fn dma_reply(out: DmaOutcome, read: bool) -> Value {
    match out {
        DmaOutcome::Done(data) if read => json!({"ok": true, "data": hex(&data)}),
        DmaOutcome::Done(_) => json!({"ok": true}),
        DmaOutcome::Fault(f) => json!({"ok": true, "fault": fault_json(&f)}),
        // `blocking_dma` never returns Pending.
        DmaOutcome::Pending(_) => json!({"ok": false, "error": "DMA still pending"}),
    }
}

fn access(req: &Value) -> std::result::Result<Access, String> {
    match req.get("access").and_then(Value::as_str).unwrap_or("read") {
        "read" => Ok(Access::Read),
        "write" => Ok(Access::Write),
        other => Err(format!("unknown access `{other}` (read or write)")),
    }
}

fn dispatch(
    req: &Value,
    engine: &SharedEngine,
    wake: &WakeSlot,
    translation: Option<&Hub>,
) -> std::result::Result<Value, String> {
    let cmd = req
        .get("cmd")
        .and_then(Value::as_str)
        .ok_or("missing `cmd`")?;
    match cmd {
        "stats" => {
            let mut stats =
                serde_json::to_value(lock(engine).stats()).map_err(|e| e.to_string())?;
            if let (Some(hub), Value::Object(map)) = (translation, &mut stats) {
                map.insert(
                    "translation".into(),
                    serde_json::to_value(hub.stats()).map_err(|e| e.to_string())?,
                );
            }
            Ok(json!({"ok": true, "stats": stats}))
        }
        "dump" => {
            let v = lock(engine);
            Ok(
                json!({"ok": true, "dump": serde_json::to_value(v.dump()).map_err(|e| e.to_string())?}),
            )
        }
        "translate" => {
            let endpoint = u32_field(req, "endpoint")?.ok_or("missing `endpoint`")?;
            let pasid = u32_field(req, "pasid")?;
            let iova = need(req, "iova")?;
            let len = num(req, "len")?.unwrap_or(1);
            let r = lock(engine)
                .device_dma()
                .translate(endpoint, pasid, iova, len, access(req)?);
            Ok(match r {
                Ok(t) => {
                    json!({"ok": true, "translation": serde_json::to_value(t).map_err(|e| e.to_string())?})
                }
                Err(f) => json!({"ok": true, "fault": fault_json(&f)}),
            })
        }
        "dma-read" => {
            let endpoint = u32_field(req, "endpoint")?.ok_or("missing `endpoint`")?;
            let pasid = u32_field(req, "pasid")?;
            let iova = need(req, "iova")?;
            let len = need(req, "len")?;
            if len > MAX_DMA {
                return Err(format!("`len` is at most {MAX_DMA}"));
            }
            let len = usize::try_from(len).map_err(|e| e.to_string())?;
            let req = DmaRequest {
                endpoint,
                pasid,
                iova,
                op: DmaOp::Read(len),
                attrs: attrs(req)?,
            };
            Ok(dma_reply(blocking_dma(engine, wake, req), true))
        }
        "dma-write" => {
            let endpoint = u32_field(req, "endpoint")?.ok_or("missing `endpoint`")?;
            let pasid = u32_field(req, "pasid")?;
            let iova = need(req, "iova")?;
            let data = unhex(
                req.get("data")
                    .and_then(Value::as_str)
                    .ok_or("missing `data`")?,
            )?;
            if data.len() as u64 > MAX_DMA {
                return Err(format!("`data` is at most {MAX_DMA} bytes"));
            }
            let req = DmaRequest {
                endpoint,
                pasid,
                iova,
                op: DmaOp::Write(data),
                attrs: attrs(req)?,
            };
            Ok(dma_reply(blocking_dma(engine, wake, req), false))
        }
        other => Err(format!("unknown command `{other}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_roundtrip_and_errors() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(unhex("00ab10"), Ok(vec![0, 0xab, 0x10]));
        assert!(unhex("abc").is_err());
        assert!(unhex("zz").is_err());
    }

    #[test]
    fn numbers_as_json_or_hex_strings() {
        let v = json!({"a": 5, "b": "0x10", "c": -1, "d": [1]});
        assert_eq!(num(&v, "a"), Ok(Some(5)));
        assert_eq!(num(&v, "b"), Ok(Some(16)));
        assert!(num(&v, "c").is_err());
        assert!(num(&v, "d").is_err());
        assert_eq!(num(&v, "e"), Ok(None));
        assert!(u32_field(&json!({"x": 0x1_0000_0000u64}), "x").is_err());
    }
}
