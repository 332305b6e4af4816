spawn-fcgi -s /run/nginx-auth-fcgi/auth.sock -M 0660 -U www-data -G www-data -n -- \
    /usr/bin/nginx-auth-fcgi serve --listen fd:0 --log syslog \
    --passdb passwd-file:/etc/dovecot/users --upstream imap=127.0.0.1:143
