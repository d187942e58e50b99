// The uWebSockets peer for `shardcast-bench compare`: uWS's built-in
// pub/sub (App::publish to a topic tree, corked writes), speaking the subset
// of shardcast's JSON protocol v1 the benches use (docs/protocol.md):
// welcome, subscribe / unsubscribe / publish / ping with acks, message
// frames, and an `/echo` endpoint. uWebSockets is not vendored: build.sh
// fetches it (or takes a checkout) and builds this file against it.
//
//   uws-peer [--listen 127.0.0.1:0]      prints `listening on ws://IP:PORT`
//
// Requests are read with a few string searches, enough for the bench's
// requests (the payload is the last field of a publish); this is a
// benchmark peer, not a protocol implementation.
#include "App.h"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace {

struct Client {
    unsigned long long id;
};

// The value of "key": as a string ("..." without escapes) or up to , or }.
std::string_view field(std::string_view msg, std::string_view key) {
    std::string quoted = "\"" + std::string(key) + "\":";
    size_t at = msg.find(quoted);
    if (at == std::string_view::npos) return {};
    std::string_view rest = msg.substr(at + quoted.size());
    if (!rest.empty() && rest[0] == '"') {
        size_t end = rest.find('"', 1);
        return end == std::string_view::npos ? std::string_view{} : rest.substr(1, end - 1);
    }
    size_t end = rest.find_first_of(",}");
    return rest.substr(0, end);
}

// The raw JSON after "payload": when it is the request's last field.
std::string_view payload(std::string_view msg) {
    size_t at = msg.find("\"payload\":");
    if (at == std::string_view::npos || msg.empty() || msg.back() != '}') return "null";
    size_t start = at + 10;
    return msg.substr(start, msg.size() - 1 - start);
}

}  // namespace

int main(int argc, char **argv) {
    std::string host = "127.0.0.1";
    int port = 0;
    for (int i = 1; i < argc; i++) {
        std::string arg = argv[i];
        if (arg == "--listen" && i + 1 < argc) {
            std::string v = argv[++i];
            size_t cut = v.rfind(':');
            host = v.substr(0, cut);
            port = std::atoi(v.substr(cut + 1).c_str());
        } else {
            std::fprintf(stderr, "uws-peer: unknown argument %s\n", arg.c_str());
            return 2;
        }
    }
    unsigned long long next_id = 0;
    uWS::App app;
    uWS::App *self = &app;
    app.ws<Client>("/ws", {
        .compression = uWS::DISABLED,
        .maxPayloadLength = 1 << 20,
        .idleTimeout = 0,
        .maxBackpressure = 1 << 20,
        .closeOnBackpressureLimit = false,
        .open = [&next_id](auto *ws) {
            ws->getUserData()->id = next_id++;
            std::string welcome = "{\"type\":\"welcome\",\"client\":\"" + std::to_string(ws->getUserData()->id) + "\",\"node\":\"uws\",\"shard\":0}";
            ws->send(welcome, uWS::OpCode::TEXT);
        },
        .message = [self](auto *ws, std::string_view msg, uWS::OpCode op) {
            if (op != uWS::OpCode::TEXT) return;
            std::string_view type = field(msg, "type");
            std::string_view topic = field(msg, "topic");
            if (type == "subscribe" && !topic.empty()) {
                ws->subscribe(topic);
            } else if (type == "unsubscribe" && !topic.empty()) {
                ws->unsubscribe(topic);
            } else if (type == "publish" && !topic.empty()) {
                std::string out = "{\"type\":\"message\",\"topic\":\"" + std::string(topic) + "\",\"payload\":" + std::string(payload(msg)) + "}";
                self->publish(topic, out, uWS::OpCode::TEXT);
            } else if (type == "ping") {
                ws->send("{\"type\":\"pong\"}", uWS::OpCode::TEXT);
            } else {
                return;
            }
            std::string_view id = field(msg, "id");
            if (!id.empty()) {
                ws->send("{\"type\":\"ack\",\"id\":" + std::string(id) + "}", uWS::OpCode::TEXT);
            }
        },
    });
    app.ws<Client>("/echo", {
        .compression = uWS::DISABLED,
        .maxPayloadLength = 1 << 20,
        .idleTimeout = 0,
        .message = [](auto *ws, std::string_view msg, uWS::OpCode op) { ws->send(msg, op); },
    });
    app.listen(host, port, [host](auto *listen_socket) {
        if (!listen_socket) {
            std::fprintf(stderr, "uws-peer: cannot listen\n");
            std::exit(1);
        }
        int bound = us_socket_local_port(0, (struct us_socket_t *) listen_socket);
        std::printf("listening on ws://%s:%d\n", host.c_str(), bound);
        std::fflush(stdout);
    });
    app.run();
}
