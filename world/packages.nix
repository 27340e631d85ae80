# The world's packages: plain `derivation`s, no nixpkgs.
#
# `busybox` and `bash` are store paths of directories that build.sh imported with
# `nix-store --add` (Debian's busybox-static and bash-static). `builtins.storePath`
# gives them string context, so every derivation lists them as inputs and Nix's
# reference scanning puts busybox into the runtime closure of every script.
#
# Busybox's shell runs its applets without PATH (standalone shell), so build
# scripts and package scripts can call `cat`, `mkdir`, `httpd`... directly.
{ busybox, bash, system ? "x86_64-linux" }:
let
  bb = builtins.storePath busybox;
  bashSrc = builtins.storePath bash;
  sh = "${bb}/bin/sh";

  # One derivation built by `busybox sh -c SCRIPT`.
  mk = { name, script, outputs ? [ "out" ], extra ? { } }:
    derivation ({
      inherit name system outputs;
      builder = "${bb}/bin/busybox";
      args = [ "sh" "-euc" script ];
    } // extra);

  # A package whose only content is one executable shell script `bin/NAME`.
  # The script text comes in through the environment, not the command line,
  # so it is written byte for byte.
  # `post` runs after the script is written (extra files).
  script = { name, bin, text, post ? "", extra ? { } }:
    mk {
      inherit name;
      extra = { scriptText = "#!${sh}\n" + text; } // extra;
      script = ''
        mkdir -p $out/bin
        printf '%s' "$scriptText" > $out/bin/${bin}
        chmod 555 $out/bin/${bin}
      '' + post;
    };

  hello = version: script {
    name = "hello-${version}";
    bin = "hello";
    text = ''
      echo "Hello, world! (hello ${version})"
    '';
  };

  # Two packages that ship the same file with different contents: the
  # environment's priorities decide which one appears in bin/.
  whoami = flavour: script {
    name = "whoami-${flavour}-1.0";
    bin = "whoami-pkg";
    text = ''
      echo "whoami-pkg from whoami-${flavour}"
    '';
  };

  libgreeting = mk {
    name = "libgreeting-1.0";
    script = ''
      mkdir -p $out/share/greeting
      echo "Greetings from libgreeting" > $out/share/greeting/message
    '';
  };

  devlib = mk {
    name = "devlib-1.0";
    script = ''
      mkdir -p $out/include $out/lib/pkgconfig
      printf '%s\n' '#ifndef DEVLIB_H' '#define DEVLIB_H' '#define DEVLIB_VERSION "1.0"' '#endif' \
        > $out/include/devlib.h
      printf '%s\n' "prefix=$out" 'includedir=''${prefix}/include' "" \
        'Name: devlib' 'Description: header-only library of the imageless test world' \
        'Version: 1.0' 'Cflags: -I''${includedir}' > $out/lib/pkgconfig/devlib.pc
    '';
  };

in
# flox/large's packages (a few hundred generated store paths) and flox/xlarge's (a thousand)
# next to the small ones.
import ./large.nix { inherit mk bb bashSrc sh; }
// import ./xlarge.nix { inherit mk bb bashSrc sh; }
// rec {
  hello_2_10 = hello "2.10";
  hello_2_12 = hello "2.12";

  # acme's private package: published to catalog `acme` (hub publish-package), so it lives in
  # the hub's per-catalog cache only, signed with acme's key.
  hello_private = script {
    name = "hello-private-1.0";
    bin = "hello-private";
    text = ''
      echo "hello-private 1.0 (acme)"
    '';
  };

  whoami_blue = whoami "blue";
  whoami_green = whoami "green";

  inherit libgreeting devlib;

  greeter = script {
    name = "greeter-1.0";
    bin = "greeter";
    text = ''
      echo "$(cat ${libgreeting}/share/greeting/message) (via greeter)"
    '';
  };

  # Multi-output: the program in `out`, its manual page in `man`.
  greet = mk {
    name = "greet-1.0";
    outputs = [ "out" "man" ];
    extra.scriptText = "#!${sh}\necho \"greet: hello from a multi-output package\"\n";
    script = ''
      mkdir -p $out/bin $man/share/man/man1
      printf '%s' "$scriptText" > $out/bin/greet
      chmod 555 $out/bin/greet
      printf '%s\n' '.TH GREET 1' '.SH NAME' 'greet \- print a greeting' > $man/share/man/man1/greet.1
    '';
  };

  # A tool whose development dependency (devlib) is propagated: Flox links
  # devlib into the environment in dev mode only.
  devtool = script {
    name = "devtool-1.0";
    bin = "devtool";
    text = ''
      if [ -n "''${FLOX_ENV:-}" ] && [ -e "$FLOX_ENV/include/devlib.h" ]; then
        echo "devtool: devlib found"
      else
        echo "devtool: devlib missing"
      fi
    '';
    extra.devlib = devlib;
    post = ''
      mkdir -p $out/nix-support
      printf '%s\n' "$devlib" > $out/nix-support/propagated-build-inputs
    '';
  };

  # The echoip server: busybox httpd in the foreground with a document root in
  # the store holding one CGI script; httpd runs cgi-bin/index.cgi for "/"
  # because there is no index.html. Nothing is written at run time, so it
  # works on a read-only root file system without /tmp.
  echoip = script {
    name = "echoip-1.0";
    bin = "echoip";
    extra.cgiText = "#!${sh}\n" + ''
      # httpd listens dual-stack, so IPv4 clients show up as [::ffff:a.b.c.d].
      addr="$REMOTE_ADDR"
      addr="''${addr#[}"
      addr="''${addr%]}"
      addr="''${addr#::ffff:}"
      printf 'Content-Type: text/plain\r\n\r\n%s\n' "$addr"
    '';
    post = ''
      mkdir -p $out/share/echoip/www/cgi-bin
      printf '%s' "$cgiText" > $out/share/echoip/www/cgi-bin/index.cgi
      chmod 555 $out/share/echoip/www/cgi-bin/index.cgi
      sed "s|@out@|$out|g" $out/bin/echoip > echoip && cat echoip > $out/bin/echoip
    '';
    text = ''
      port="''${PORT:-8080}"
      echo "echoip: listening on port $port" >&2
      httpd -f -p "$port" -h @out@/share/echoip/www &
      server=$!
      # As PID 1 in a container a signal without a handler is ignored: trap
      # TERM/INT, stop the server and exit 0.
      trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; echo "echoip: stopped" >&2; exit 0' TERM INT
      wait "$server"
    '';
  };

  bash = mk {
    name = "bash-5.2.15";
    script = ''
      mkdir -p $out/bin
      cp ${bashSrc}/bin/bash $out/bin/bash
      chmod 555 $out/bin/bash
      ln -s bash $out/bin/sh
    '';
  };
}
