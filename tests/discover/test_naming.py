"""Service names from real-world command lines (as /proc/<pid>/cmdline gives them)."""

from __future__ import annotations

import pytest

from beyla_sidecar.discover.naming import app_name, package

CASES = [
    # Python scripts and modules
    ("python3.11", ["python3", "app.py"], "app"),
    ("python3.11", ["/app/.venv/bin/python", "/app/src/orders/server.py", "--port", "80"], "server"),
    ("python3.11", ["python3", "manage.py", "runserver", "0.0.0.0:8000"], "manage"),
    ("python3.11", ["python3", "/srv/app/"], "app"),  # a directory with __main__.py
    ("python3.11", ["python3", "-m", "http.server", "8000"], "http.server"),
    ("python3.11", ["python3", "-m", "myservice.main"], "myservice"),
    ("python3.11", ["python3", "-m", "myservice.__main__"], "myservice"),
    ("python3.11", ["python3", "-um", "myservice"], "myservice"),
    ("python3.11", ["python3", "-u", "-X", "importtime", "-W", "ignore", "-OO", "-mmyservice"], "myservice"),
    ("python3.11", ["python3", "-Wignore::DeprecationWarning", "app.py"], "app"),
    ("python3.11", ["python3", "--check-hash-based-pycs", "never", "app.py"], "app"),
    ("python3.12t", ["python3.12t", "-I", "worker.py"], "worker"),
    ("pypy3.10-c", ["pypy3", "app.py"], "app"),
    # Python app servers: the app's top package
    ("python3.11", ["python3", "-m", "uvicorn", "app:main"], "app"),
    ("python3.11", ["python", "-m", "uvicorn", "myservice.main:app", "--host", "0.0.0.0", "--port", "80"],
     "myservice"),
    ("python3.11", ["/usr/local/bin/python3.11", "/usr/local/bin/uvicorn", "app:main"], "app"),
    ("python3.11", ["/usr/local/bin/python3.11", "/usr/local/bin/uvicorn", "--factory", "app:create_app"], "app"),
    ("python3.11", ["/usr/local/bin/python3.11", "/usr/local/bin/uvicorn", "src.orders.api:app"], "orders"),
    ("python3.11", ["/usr/local/bin/python3.11", "/usr/local/bin/gunicorn", "myapp.wsgi:application",
                    "-b", "0.0.0.0:8000", "-w", "4"], "myapp"),
    ("python3.11", ["/usr/local/bin/python3.11", "/usr/local/bin/gunicorn", "-k",
                    "uvicorn.workers.UvicornWorker", "-w", "4", "--bind", "unix:app.sock", "main:app"], "main"),
    ("python3.11", ["/usr/local/bin/python", "/usr/local/bin/gunicorn", "--log-level=info",
                    "--access-logfile", "-", "myproject.wsgi"], "myproject"),
    ("python3.11", ["/usr/local/bin/python", "/usr/local/bin/gunicorn", "-c", "gunicorn.conf.py"], "gunicorn"),
    ("python3.11", ["python", "/usr/local/bin/hypercorn", "--bind", "0.0.0.0:8000", "shop.asgi:app"], "shop"),
    ("python3.11", ["python", "/usr/local/bin/daphne", "-b", "0.0.0.0", "-p", "8001", "chat.asgi:application"],
     "chat"),
    ("python3.11", ["python", "/usr/local/bin/granian", "--interface", "asgi", "main:app"], "main"),
    ("python3.11", ["python", "/usr/local/bin/waitress-serve", "--port=8080", "hello:app"], "hello"),
    ("python3.11", ["python", "/usr/local/bin/celery", "-A", "proj", "worker", "-l", "info"], "proj"),
    ("python3.11", ["python", "/usr/local/bin/celery", "--app=proj.celery", "beat"], "proj"),
    ("python3.11", ["python", "-m", "celery", "-Aproj", "worker"], "proj"),
    ("python3.11", ["python", "/usr/local/bin/flask", "--app", "hello", "run", "--host=0.0.0.0"], "hello"),
    ("python3.11", ["python3", "-m", "flask", "run"], "flask"),  # FLASK_APP from the environment
    # Python processes that retitled themselves (setproctitle): whole or split on spaces
    ("python3.11", ["gunicorn: worker [myapp.wsgi:application]"], "myapp"),
    ("python3.11", ["gunicorn:", "master", "[orders-api]"], "orders-api"),
    ("python3.11", ["[celeryd: celery@web-1:MainProcess] -active- (worker -A proj)"], ""),
    # Nothing to go by: inline code, stdin, a REPL
    ("python3.11", ["python3", "-c", "import app; app.main()"], ""),
    ("python3.11", ["python3", "-Bc", "print(1)"], ""),
    ("python3.11", ["python3", "-"], ""),
    ("python3.11", ["python3"], ""),
    ("python3.11", ["python3", "-i"], ""),
    # Node.js and Bun
    ("node", ["node", "server.js"], "server"),
    ("node", ["node", "--require", "./tracing.js", "--max-old-space-size=4096", "dist/main.js"], "main"),
    ("node", ["node", "-r", "dotenv/config", "--env-file=.env", "index.mjs"], "index"),
    ("node", ["node", "/app/node_modules/.bin/next", "start"], "next"),
    ("node", ["node", "-e", "require('./server')"], ""),
    ("node", ["node", "."], ""),
    ("node", ["orders-api"], "orders-api"),  # process.title
    ("bun", ["bun", "run", "server.ts"], "server"),
    # Java: the jar without its version, else the main class or module
    ("java", ["java", "-jar", "orders.jar"], "orders"),
    ("java", ["java", "-Xmx512m", "-XX:+UseG1GC", "-Dspring.profiles.active=prod", "-jar",
              "/app/orders-0.0.1-SNAPSHOT.jar", "--server.port=8080"], "orders"),
    ("java", ["/opt/java/openjdk/bin/java", "-javaagent:/otel.jar", "-jar", "billing-service-2.3.jar"],
     "billing-service"),
    ("java", ["java", "-cp", "/app/resources:/app/classes:/app/libs/*", "com.acme.Main", "serve"], "com.acme.Main"),
    ("java", ["java", "--class-path=/app", "com.acme.orders.OrdersApplication"], "com.acme.orders.OrdersApplication"),
    ("java", ["java", "-p", "/app/mods", "-m", "com.acme.orders/com.acme.orders.Main"], "com.acme.orders"),
    ("java", ["java", "Hello.java"], "Hello"),
    ("java", ["java", "@/app/jvm.args"], ""),
    ("java", ["java", "-version"], ""),
    # Ruby, PHP, Perl, .NET
    ("ruby3.2", ["ruby", "app.rb"], "app"),
    ("ruby3.2", ["/usr/local/bin/ruby", "bin/rails", "server", "-b", "0.0.0.0"], "rails"),
    ("ruby3.2", ["ruby", "-Ilib", "-rbundler/setup", "-S", "puma", "-C", "config/puma.rb"], "puma"),
    ("ruby3.2", ["puma 6.4.2 (tcp://0.0.0.0:3000) [myapp]"], "myapp"),
    ("ruby3.2", ["puma:", "cluster", "worker", "0:", "1", "[myapp]"], "myapp"),
    ("ruby3.2", ["sidekiq 7.2.0 shop [0 of 5 busy]"], "sidekiq"),
    ("ruby3.2", ["ruby", "-e", "puts 1"], ""),
    ("php8.2", ["php", "artisan", "serve"], "artisan"),
    ("php8.2", ["php", "-dmemory_limit=1G", "-S", "0.0.0.0:8000", "router.php"], "router"),
    ("php8.2", ["php", "-d", "memory_limit=1G", "-S", "0.0.0.0:8000", "-t", "public"], ""),
    ("php8.2", ["php", "-f", "/var/www/worker.php"], "worker"),
    ("perl", ["perl", "-Mstrict", "-w", "server.pl"], "server"),
    ("perl", ["perl", "-wle", "print 1"], ""),
    ("dotnet", ["dotnet", "Orders.Api.dll"], "Orders.Api"),
    ("dotnet", ["dotnet", "exec", "--runtimeconfig", "app.runtimeconfig.json", "/app/Orders.Api.dll"], "Orders.Api"),
    ("dotnet", ["dotnet", "run", "--project", "src/Orders.Api"], ""),  # the SDK, not an app
    # Not interpreters: their executable name is their name
    ("nginx", ["nginx", "-g", "daemon off;"], ""),
    ("curl", ["curl", "http://shop/"], ""),
    ("python3.11", [], ""),
]


@pytest.mark.parametrize(("executable", "argv", "expected"), CASES, ids=[" ".join(c[1])[:60] for c in CASES])
def test_app_name(executable: str, argv: list[str], expected: str) -> None:
    assert app_name(executable, argv) == expected


def test_package() -> None:
    assert package("myapp.wsgi:application") == "myapp"
    assert package("app:create_app()") == "app"
    assert package("src.orders.api:app") == "orders"
    assert package("src") == "src"
    assert package("") == ""
