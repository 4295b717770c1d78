# A stand-in for what Open OnDemand provides to a batch-connect app, so its ERB
# templates render with Ruby's own erb and its job runs under plain sbatch.
# (Open OnDemand itself is not installed here; this follows its documented behaviour.)
#
#   ruby ood_harness.rb stage APP_DIR STAGED_DIR [KEY=VALUE ...]
#     renders submit.yml.erb to STAGED_DIR/submit.yml and template/*.erb into STAGED_DIR
#     (as OOD stages a session), and writes STAGED_DIR/job_script.sh: the basic or vnc
#     template's wrapper with OOD's bash helpers (find_port, create_passwd,
#     wait_until_port_used, clean_up); set_host=... overrides "host=$(hostname)".
#   ruby ood_harness.rb view APP_DIR STAGED_DIR OUT_HTML
#     renders view.html.erb with host, port and password from STAGED_DIR/connection.yml.
require "erb"
require "fileutils"
require "yaml"

# The binding OOD's templates see: form values as methods, plus the session's values.
class Context
  def initialize(values)
    @values = values
  end

  def method_missing(name, *args)
    key = name.to_s
    return @values[key] if @values.key?(key)

    raise NameError, "template used #{key}, which the form does not provide"
  end

  def respond_to_missing?(name, include_private = false)
    @values.key?(name.to_s) || super
  end

  def get_binding
    binding
  end
end

def render(path, values)
  ERB.new(File.read(path), trim_mode: "-").result(Context.new(values).get_binding)
end

HELPERS = <<~'BASH'
  port_used() { (: < "/dev/tcp/${1%%:*}/${1##*:}") >/dev/null 2>&1; }
  find_port() {
    local host=$1 port
    for _ in $(seq 100); do
      port=$(( RANDOM % 40000 + 20000 ))
      port_used "${host}:${port}" || { echo "${port}"; return 0; }
    done
    return 1
  }
  create_passwd() { tr -cd 'a-zA-Z0-9' < /dev/urandom 2> /dev/null | head -c"${1:-8}"; }
  wait_until_port_used() {
    local target=$1 time=${2:-30}
    for _ in $(seq $(( time * 2 ))); do
      port_used "${target}" && return 0
      sleep 0.5
    done
    return 1
  }
  clean_up() {
    echo "Cleaning up..."
    [ -n "${SCRIPT_PID:-}" ] && pkill -P "${SCRIPT_PID}" 2>/dev/null
    [ -n "${SCRIPT_PID:-}" ] && kill "${SCRIPT_PID}" 2>/dev/null
    exit "${1:-0}"
  }
BASH

def job_script(staged, template, set_host, conn_params)
  after = File.exist?(File.join(staged, "after.sh")) ? 'source "./after.sh"' : ""
  vnc = template == "vnc" ? "echo 'vnc template: the VNC server is not started by this harness'" : ""
  # OOD writes every connection parameter the app lists (basic: host, port, password).
  fields = conn_params.map { |name| "#{name}: %s\\n" }.join
  values = conn_params.map { |name| "\"${#{name}}\"" }.join(" ")
  <<~SCRIPT
    #!/bin/bash
    # The #{template} template's job script, as OOD writes it (harness version).
    cd #{staged}
    #{HELPERS}
    trap clean_up TERM
    #{set_host}
    port=$(find_port "${host}")
    password=$(create_passwd 16)
    #{vnc}
    echo "Sourcing before.sh..."
    source "./before.sh"
    echo "Starting script.sh..."
    ./script.sh &
    SCRIPT_PID=$!
    #{after}
    umask 077
    printf '#{fields}' #{values} > connection.yml
    wait "${SCRIPT_PID}"
  SCRIPT
end

def stage(app, staged, values, set_host)
  FileUtils.mkdir_p(staged)
  submit = render(File.join(app, "submit.yml.erb"), values)
  File.write(File.join(staged, "submit.yml"), submit)
  Dir.glob(File.join(app, "template", "*")).each do |src|
    name = File.basename(src).delete_suffix(".erb")
    text = src.end_with?(".erb") ? render(src, values) : File.read(src)
    File.write(File.join(staged, name), text)
    File.chmod(0o755, File.join(staged, name)) if name.end_with?(".sh")
  end
  batch_connect = YAML.safe_load(submit).fetch("batch_connect")
  conn_params = (%w[host port password] + batch_connect.fetch("conn_params", [])).uniq
  path = File.join(staged, "job_script.sh")
  File.write(path, job_script(staged, batch_connect["template"], set_host, conn_params))
  File.chmod(0o755, path)
end

def view(app, staged, out)
  conn = YAML.safe_load(File.read(File.join(staged, "connection.yml")))
  File.write(out, render(File.join(app, "view.html.erb"), conn.transform_values(&:to_s)))
end

mode, app, staged, *rest = ARGV
case mode
when "stage"
  set_host = "host=$(hostname)"
  values = {}
  rest.each do |pair|
    key, value = pair.split("=", 2)
    if key == "set_host" then set_host = value else values[key] = value.to_s end
  end
  stage(app, staged, values, set_host)
when "view"
  view(app, staged, rest.fetch(0))
else
  warn "usage: ruby ood_harness.rb stage|view APP_DIR STAGED_DIR ..."
  exit 2
end
