//! Waiting for a booting guest's agent, racing QEMU's and the helpers'
//! exit and the deadline.

use std::time::{Duration, Instant};

use cocoon_protocol::client::GuestClient;

use super::VmError;
use crate::agent::{self, AgentAddr, AgentError};
use crate::launch::LaunchPlan;
use crate::process::{log_tail, Daemon};
use crate::qemu::qmp::Qmp;

/// How long a helper daemon may take to create its socket.
pub(super) const HELPER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for one hybrid-vsock handshake before opening another.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(4);

fn console_tail(plan: &LaunchPlan) -> String {
    plan.console_log
        .as_deref()
        .map_or_else(|| "(debug_console is off)".into(), |c| log_tail(c, 8))
}

/// Whether the guest driver has set the vsock device up (always true for
/// kernel vhost-vsock, where early connects are harmless).
///
/// vhost-device-vsock 0.3.0 can leave a CONNECT unanswered for good when it
/// arrives before the guest driver set the device up (seen under load), and
/// then answers no later CONNECT either; so wait for the driver first.
async fn vsock_driver_ready(plan: &LaunchPlan, qmp: &Qmp) -> Result<bool, String> {
    if !matches!(plan.agent, AgentAddr::Hybrid { .. }) {
        return Ok(true);
    }
    match qmp
        .virtio_driver_ok(crate::qemu::argv::VSOCK_DEVICE_ID)
        .await
    {
        Ok(true) => Ok(true),
        Ok(false) => Err("the guest has not initialized its vsock device yet".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Resolves when any helper has exited (polled: the helpers' exits are
/// also watched by the VM once it runs).
async fn helper_died(helpers: &[Daemon]) {
    loop {
        if helpers.iter().any(|h| h.try_wait().is_some()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connects to the agent and checks its protocol version; returns the
/// client and the guest kernel release.
pub(super) async fn wait_for_agent(
    plan: &LaunchPlan,
    qemu: &Daemon,
    helpers: &[Daemon],
    qmp: &Qmp,
    started: Instant,
) -> Result<(GuestClient, String), VmError> {
    let deadline = started + plan.dial_timeout;
    let mut exit = qemu.exit_watch();
    let helper_exited = || {
        helpers.iter().find_map(|h| {
            h.try_wait().map(|status| VmError::HelperExited {
                helper: h.name(),
                status,
                secs: started.elapsed().as_secs_f64(),
                log: log_tail(h.log(), 3),
            })
        })
    };
    let mut driver_ready = false;
    let mut last_attempt = String::from("none yet");
    loop {
        if let Some(status) = qemu.try_wait() {
            return Err(VmError::QemuExited {
                timeout: plan.dial_timeout.as_secs(),
                status,
                secs: started.elapsed().as_secs_f64(),
                qemu_log: log_tail(qemu.log(), 3),
                console: console_tail(plan),
            });
        }
        // A dead helper (virtio-fs, vsock) means no agent will ever answer.
        // A helper also ends when QEMU does (its peer went away): then
        // QEMU's exit is the cause to report, so give it a moment.
        if let Some(e) = helper_exited() {
            let grace = Instant::now() + Duration::from_millis(500);
            while qemu.try_wait().is_none() && Instant::now() < grace {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if qemu.try_wait().is_some() {
                continue;
            }
            return Err(e);
        }
        if Instant::now() >= deadline {
            return Err(VmError::AgentTimeout {
                secs: plan.dial_timeout.as_secs(),
                last_attempt,
                console: console_tail(plan),
            });
        }
        if !driver_ready {
            match vsock_driver_ready(plan, qmp).await {
                Ok(r) => driver_ready = r,
                Err(e) => last_attempt = e,
            }
            if !driver_ready {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        // An attempt that got through may take long under emulation on a
        // loaded host; never cut it short before the deadline (retrying
        // only adds work for the guest). One that cannot get through fails
        // fast: the backend closes it while nothing listens.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let attempt = tokio::select! {
            r = tokio::time::timeout(left, agent::connect_checked(&plan.agent, HANDSHAKE_TIMEOUT.min(left))) => r,
            // Reported at the top of the loop.
            _ = exit.wait_for(Option::is_some) => continue,
            () = helper_died(helpers) => continue,
        };
        match attempt {
            Ok(Ok(ok)) => return Ok(ok),
            Ok(Err(AgentError::Version(v))) => return Err(AgentError::Version(v).into()),
            Ok(Err(e)) => {
                last_attempt = e.to_string();
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(_) => last_attempt = format!("no answer within {} s", left.as_secs()),
        }
    }
}
