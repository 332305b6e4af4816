<?php
// The classic nginx mail auth_http script, as an admin would write it for
// PHP-FPM, doing the same work as nginx-auth-fcgi with a passwd-file: check the
// shared secret, read the Dovecot-style passwd-file, verify {PLAIN} or a crypt()
// hash ({SHA512-CRYPT}, {BLF-CRYPT}, {CRYPT}) in constant time, answer with
// Auth-Status/Auth-Server/Auth-Port or an error with a growing Auth-Wait.
// tests/bench/responder benchmarks it beside our responder (the baseline asked
// for by issue 9); it is not part of the product.
//
// fastcgi_param PASSWD_FILE /path/users.passwd;   # the users
// fastcgi_param AUTH_KEY    secret;               # expected X-Auth-Key
// fastcgi_param UPSTREAM    127.0.0.1:143;        # where logins go

function fail(string $status, int $attempt, bool $smtp): void
{
    header("Auth-Status: $status");
    if ($smtp) {
        header('Auth-Error-Code: 535 5.7.8');
    }
    if ($attempt < 10) {
        header('Auth-Wait: ' . min(16, 1 << max(0, $attempt - 1)));
    }
    exit;
}

$key = $_SERVER['HTTP_X_AUTH_KEY'] ?? '';
if (!hash_equals((string) ($_SERVER['AUTH_KEY'] ?? ''), $key)) {
    http_response_code(403);
    exit;
}

// nginx %-escapes only space, % and control bytes; rawurldecode undoes that
// without turning '+' into a space (urldecode would).
$user = rawurldecode($_SERVER['HTTP_AUTH_USER'] ?? '');
$pass = rawurldecode($_SERVER['HTTP_AUTH_PASS'] ?? '');
$method = $_SERVER['HTTP_AUTH_METHOD'] ?? '';
$protocol = $_SERVER['HTTP_AUTH_PROTOCOL'] ?? '';
$attempt = (int) ($_SERVER['HTTP_AUTH_LOGIN_ATTEMPT'] ?? 1);
$smtp = $protocol === 'smtp';

if ($method !== 'plain' || $user === '' || $pass === '') {
    fail('Invalid login or password', $attempt, $smtp);
}

$stored = null;
$fh = fopen($_SERVER['PASSWD_FILE'], 'r');
if ($fh === false) {
    header('Auth-Status: Temporary server problem, try again later');
    header('Auth-Wait: 3');
    exit;
}
while (($line = fgets($fh)) !== false) {
    $f = explode(':', rtrim($line, "\r\n"));
    if ($f[0] === $user && isset($f[1])) {
        $stored = $f[1];
        break;
    }
}
fclose($fh);

$ok = false;
if ($stored !== null && preg_match('/^\{([A-Z0-9-]+)\}(.*)$/', $stored, $m)) {
    switch ($m[1]) {
        case 'PLAIN':
            $ok = hash_equals($m[2], $pass);
            break;
        case 'SHA512-CRYPT':
        case 'SHA256-CRYPT':
        case 'BLF-CRYPT':
        case 'CRYPT':
            $ok = hash_equals($m[2], crypt($pass, $m[2]));
            break;
    }
}
if (!$ok) {
    fail('Invalid login or password', $attempt, $smtp);
}

[$host, $port] = explode(':', $_SERVER['UPSTREAM']);
header('Auth-Status: OK');
header("Auth-Server: $host");
header("Auth-Port: $port");
