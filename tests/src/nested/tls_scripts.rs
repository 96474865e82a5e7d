//! The nested scenarios of TLS: SNI policy (`sni`) and interception with secrets
//! (`intercept`, `intercept_terminate`), as outer-VM scripts and the guest scripts they run.
//! The server side is [`super::tls_service`] on 192.0.2.10:8443.

/// Two runs with port 8443 (the outer VM's TLS server) inspected: one with `denied.test`
/// denied, one requiring a server name.
pub const SNI_OUTER: &str = "ringfence run --linux --mem 256 --timeout 150 --initrd \"$RF_INITRD\" --tls-ports 8443 --net-deny-domain denied.test --net-stats -- sh /t/sni.sh
echo \"CHECK first_status $?\"
ringfence run --linux --mem 256 --timeout 150 --initrd \"$RF_INITRD\" --tls-ports 8443 --tls-require-sni -- sh /t/require.sh
echo \"CHECK second_status $?\"
";

/// curl names the server with `--resolve` (SNI = the name), sends none for an address.
pub const SNI_GUEST: &str = "out=$(curl -sk -m 15 --resolve allowed.test:8443:192.0.2.10 https://allowed.test:8443/ 2>&1); echo \"CHECK sni_allowed status=$? $out\"
curl -sk -m 15 --resolve denied.test:8443:192.0.2.10 https://denied.test:8443/ > /dev/null 2>&1; echo \"CHECK sni_denied status=$?\"
out=$(curl -sk -m 15 https://192.0.2.10:8443/ 2>&1); echo \"CHECK sni_none status=$? $out\"
curl -s -m 15 http://192.0.2.10:8443/ > /dev/null 2>&1; echo \"CHECK plain_on_tls_port status=$?\"
";

/// The second SNI run's guest: no name where one is required, then a name.
pub const SNI_REQUIRED_GUEST: &str = "curl -sk -m 15 https://192.0.2.10:8443/ > /dev/null 2>&1; echo \"CHECK required_none status=$?\"
out=$(curl -sk -m 15 --resolve allowed.test:8443:192.0.2.10 https://allowed.test:8443/ 2>&1); echo \"CHECK required_named status=$? $out\"
";

/// Interception with a secret allowed for `allowed.test` only, its value from the host
/// environment (never on ringfence's command line). Once the guest has made its requests it
/// says so and waits; the outer script counts the value and the placeholder in its RAM, then
/// stops the VM.
pub const INTERCEPT_OUTER: &str = "RF_NESTED_KEY=rf-nested-secret-4242 ringfence run --linux --mem 256 --timeout 300 --initrd \"$RF_INITRD\" --tls-ports 8443 --tls-intercept --tls-upstream-ca /tmp/rf-upstream-ca.pem --tls-bypass bypass.test --tls-block-quic --secret-env API_KEY=RF_NESTED_KEY@allowed.test --tls-ca-out \"$RF_DIR/ca.pem\" --net-stats -- sh /t/intercept.sh > \"$RF_DIR/console\" 2> \"$RF_DIR/err\" &
pid=$!
i=0; while [ $i -lt 2400 ] && ! grep -q 'CHECK memdump' \"$RF_DIR/console\"; do sleep 0.1; i=$((i+1)); done
echo \"CHECK cmdline_value $(tr '\\0' ' ' < /proc/$pid/cmdline | grep -c rf-nested-secret-4242)\"
rf-nested guest-ram $pid 256 value=rf-nested-secret-4242 placeholder=rf_secret_
kill $pid; wait $pid
echo \"CHECK intercept_status $?\"
tr -d '\\r' < \"$RF_DIR/console\"; cat \"$RF_DIR/err\" >&2
echo \"CHECK ca_out $(grep -c 'BEGIN CERTIFICATE' \"$RF_DIR/ca.pem\")\"
";

/// What the guest checks through the proxy (no `-k`: the agent installed ringfence's CA).
pub const INTERCEPT_GUEST: &str = "case \"$API_KEY\" in rf_secret_*) echo \"CHECK env placeholder\";; *) echo \"CHECK env other\";; esac
R=--resolve
out=$(curl -s -m 60 $R allowed.test:8443:192.0.2.10 https://allowed.test:8443/ 2>&1); echo \"CHECK trusted status=$? $out\"
echo \"CHECK issuer $(curl -sv -m 60 $R allowed.test:8443:192.0.2.10 https://allowed.test:8443/ 2>&1 | grep -o 'issuer:.*' | head -1)\"
out=$(curl -s -m 60 -H \"x-api-key: $API_KEY\" $R allowed.test:8443:192.0.2.10 https://allowed.test:8443/ 2>&1); echo \"CHECK secret_allowed status=$? $out\"
code=$(curl -s -m 60 -o /tmp/body -w '%{http_code}' -H \"x-api-key: $API_KEY\" $R other.test:8443:192.0.2.10 https://other.test:8443/); echo \"CHECK secret_elsewhere code=$code $(head -c 40 /tmp/body)\"
code=$(curl -s -m 60 -o /dev/null -w '%{http_code}' -H 'Host: other.test' $R allowed.test:8443:192.0.2.10 https://allowed.test:8443/); echo \"CHECK fronting code=$code\"
curl -s -m 60 $R wrong.test:8443:192.0.2.10 https://wrong.test:8443/ > /dev/null 2>&1; echo \"CHECK wrong_cert status=$?\"
echo \"CHECK bypass $(curl -skv -m 60 $R bypass.test:8443:192.0.2.10 https://bypass.test:8443/ 2>&1 | grep -o 'issuer:.*' | head -1)\"
echo quic | socat -T 2 - UDP:192.0.2.10:8443 > /dev/null 2>&1; echo \"CHECK quic status=$?\"
out=$(curl -s -m 60 \"http://192.0.2.10:8080/?k=$API_KEY\" 2>&1); echo \"CHECK plaintext status=$? $out\"
echo \"CHECK memdump\"
sleep 600
";

/// `--secret-violation terminate`: the placeholder sent to another host stops the VM.
pub const TERMINATE_OUTER: &str = "ringfence run --linux --mem 256 --timeout 200 --initrd \"$RF_INITRD\" --tls-ports 8443 --tls-intercept --tls-upstream-ca /tmp/rf-upstream-ca.pem --secret API_KEY=rf-nested-secret-4242@allowed.test --secret-violation terminate -- sh /t/terminate.sh
echo \"CHECK terminate_status $?\"
";

/// The terminate run's guest.
pub const TERMINATE_GUEST: &str = "echo \"CHECK key ${API_KEY%${API_KEY#rf_secret_}}\"
out=$(curl -sv -m 60 -H \"x-api-key: $API_KEY\" --resolve other.test:8443:192.0.2.10 https://other.test:8443/ 2>&1 | tail -5); echo \"CHECK violation_request status=$? $out\"
sleep 60
echo \"CHECK survived\"
";
