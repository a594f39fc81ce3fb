-- A market-data stream: public tickers plus private "<uid>@balance" channels.
-- {"op":"login","uid":1001}, {"op":"sub","kinds":["balance","order"]}, {"op":"ticker","symbols":["BTC"]}
local mix_log = mix.log
local mix_WARN = mix.WARN

function on_message(msg)
    local conn = mix.websocket()
    local data, err = mix.json_decode(msg["data"])
    if err then
        mix_log(mix_WARN, "bad frame: " .. err)
        return
    end
    if data["op"] == "login" then
        conn:set_context_value("uid", data["uid"])
        conn:send('{"result":true}')
        return
    end
    local uid = conn:context_value("uid")
    if data["op"] == "sub" then
        if uid == nil then
            conn:send('{"code":1,"msg":"Not Auth"}')
            return
        end
        local channels = {}
        for i = 1, table.getn(data["kinds"]) do
            channels[i] = string.format("%d@%s", uid, data["kinds"][i])
        end
        local err = conn:subscribe(unpack(channels))
        conn:send(mix.json_encode({ result = err == nil, channels = channels }))
    elseif data["op"] == "ticker" then
        for _, symbol in ipairs(data["symbols"]) do
            conn:subscribe("ticker:" .. symbol)
        end
        conn:send('{"result":true}')
    elseif data["op"] == "unsub" then
        local err = conn:unsubscribe(string.format("%d@%s", uid, data["kind"]))
        conn:send(mix.json_encode({ result = err == nil }))
    end
end
