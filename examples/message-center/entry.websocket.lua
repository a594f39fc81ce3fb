-- The article's message centre ("CONNMIX 开发 WebSocket 用户消息中心").
-- on_message is the article's code with the smallest fixes its own test flow
-- needs (each marked FIX; see README.md "What differs from the article"):
--   1. the channel is checked only for subscribe/unsubscribe, so
--      {"op":"auth","token":"***"} (no channel) works as the article's test sends it;
--   2. the auth request body is valid JSON ({"token":"***"});
--   3. a successful auth replies {"result":true}, as the article's test expects;
--   4. every refused request is answered {"code":..,"msg":..} (table in README.md,
--      "Replies") instead of a silent close or a misleading {"result":true}.
local mix_log = mix.log
local mix_DEBUG = mix.DEBUG

-- FIX 4: the answer to a request the centre refuses.
local function refuse(conn, code, msg)
    conn:send(mix.json_encode({ code = code, msg = msg }))
end

function on_handshake(client_id, headers, server)
end

function on_message(msg)
    --print(msg)
    local conn = mix.websocket()
    if msg["type"] ~= "text" then
        refuse(conn, 3, "invalid request: send a JSON text frame")
        return
    end

    -- main.py sets the auth_url option (--auth-port); run from connmix.yaml, the article's address.
    local auth_url = mix.server.option("auth_url") or "http://127.0.0.1:8000/websocket_auth" --填写解析token的api接口地址

    local data, err = mix.json_decode(msg["data"])
    if err or type(data) ~= "table" then
        mix_log(mix_DEBUG, "json_decode error: " .. tostring(err))
        refuse(conn, 3, "invalid request: send a JSON object like {\"op\":\"auth\",\"token\":\"...\"}")
        return
    end

    local op = data["op"]

    if op == "auth" then
        local token = data["token"]
        local resp, err = mix.http.request("POST", auth_url, {
            body = mix.json_encode({ token = token }) -- FIX 2
        })
        if err then
            mix_log(mix_DEBUG, "http.request error: " .. err)
            refuse(conn, 6, "auth service unavailable")
            conn:close()
            return
        end
        if resp.status_code == 401 then
            refuse(conn, 2, "invalid token")
            conn:close()
            return
        end
        if resp.status_code ~= 200 then
            mix_log(mix_DEBUG, "http.request status_code: " .. resp["status_code"])
            refuse(conn, 6, "auth service unavailable")
            conn:close()
            return
        end
        local body_table, err = mix.json_decode(resp["body"])
        if err then
            mix_log(mix_DEBUG, "json_decode error: " .. err)
            refuse(conn, 6, "auth service unavailable")
            conn:close()
            return
        end
        conn:set_context_value("uid", body_table["uid"])
        conn:send('{"result":true}') -- FIX 3
        return
    end

    if op ~= "subscribe" and op ~= "unsubscribe" then
        refuse(conn, 4, "unknown op: use auth, subscribe or unsubscribe")
        return
    end

    -- FIX 1: the channel check moved below the auth branch.
    local channel_raw = data["channel"]
    local channel_table = mix.str_split(type(channel_raw) == "string" and channel_raw or "", "@")
    if table.getn(channel_table) ~= 2 or channel_table[2] ~= "user" then
        mix_log(mix_DEBUG, "invalid channel: " .. tostring(channel_raw))
        refuse(conn, 5, "invalid channel: expected \"@user\"")
        return
    end

    local uid = conn:context_value("uid")

    if op == "subscribe" then
        if uid == nil then
            conn:send('{"code":1,"msg":"Not Auth"}')
            return
        end
        local err = conn:subscribe("user:" .. uid)
        if err then
            mix_log(mix_DEBUG, "subscribe error: " .. err)
            refuse(conn, 7, "subscribe failed")
            conn:close()
            return
        end
    end

    if op == "unsubscribe" then
        if uid == nil then
            conn:send('{"code":1,"msg":"Not Auth"}')
            return
        end
        local err = conn:unsubscribe("user:" .. uid)
        if err then
            mix_log(mix_DEBUG, "unsubscribe error: " .. err)
            refuse(conn, 7, "unsubscribe failed")
            conn:close()
            return
        end
    end

    conn:send('{"result":true}')
end

function on_close(client_id, err)
end
