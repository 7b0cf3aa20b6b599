package hl7_test

import (
	"fmt"
	"strings"
	"time"

	"github.com/vigilhealth/vigil/interop/hl7"
)

func show(b []byte) { fmt.Println(strings.ReplaceAll(strings.TrimRight(string(b), "\r"), "\r", "\n")) }

func ExampleBuildORU() {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	b, _ := hl7.BuildORU(hl7.ORU{ControlID: "VGL000123", Time: at, SendingFacility: "GENHOSP", ReceivingApplication: "EPIC", ReceivingFacility: "GENHOSP",
		Patient: hl7.ORUPatient{ID: "0190a1b2-0000-7000-8000-000000000001", MRN: "MRN12345", AssigningAuthority: "GENHOSP", FamilyName: "Doe", GivenName: "Jane", BirthDate: "1980-02-15", Sex: "F", Ward: "ICU"},
		Observations: []hl7.ORUObservation{
			{Code: "8867-4", Display: "Heart rate", Value: 128, Unit: "/min", Time: at, DeviceID: "BM3-SN-001"},
			{Code: "59408-5", Display: "Oxygen saturation by pulse oximetry", Value: 89, Unit: "%", Time: at, DeviceID: "BM3-SN-001"},
		},
		Alarms: []hl7.ORUAlarm{{ID: "0190a1b2-0000-7000-8000-0000000000a1", Rule: "news2_high", Severity: "high", State: "active", Message: "NEWS2 7 (RR 2, SpO2 3, HR 2)", Time: at}}})
	show(b)
	// Output:
	// MSH|^~\&|VIGIL|GENHOSP|EPIC|GENHOSP|20260102030405+0000||ORU^R01^ORU_R01|VGL000123|P|2.5.1
	// PID|1||MRN12345^^^GENHOSP^MR~0190a1b2-0000-7000-8000-000000000001^^^VIGIL^PI||Doe^Jane||19800215|F
	// PV1|1|I|ICU
	// OBR|1||VGL000123-1^VIGIL|85353-1^Vital signs, weight, height, head circumference, oxygen saturation and BMI panel^LN|||20260102030405+0000||||||||||||||||||F
	// OBX|1|NM|8867-4^Heart rate^LN||128|/min^/min^UCUM|||||F|||20260102030405+0000||||BM3-SN-001^VIGIL
	// OBX|2|NM|59408-5^Oxygen saturation by pulse oximetry^LN||89|%^%^UCUM|||||F|||20260102030405+0000||||BM3-SN-001^VIGIL
	// OBR|2||0190a1b2-0000-7000-8000-0000000000a1^VIGIL|ALARM^Vigil alarm^99VGL|||20260102030405+0000||||||||||||||||||F
	// OBX|1|ST|RULE^Alarm rule^99VGL||news2_high||||||F|||20260102030405+0000
	// OBX|2|CWE|SEVERITY^Alarm severity^99VGL||high^high^99VGL|||AA|||F|||20260102030405+0000
	// OBX|3|ST|STATE^Alarm state^99VGL||active||||||F|||20260102030405+0000
	// OBX|4|TX|MESSAGE^Alarm message^99VGL||NEWS2 7 (RR 2, SpO2 3, HR 2)||||||F|||20260102030405+0000
}

func ExampleAck() {
	in := "MSH|^~\\&|EPIC|GENHOSP|VIGIL|GENHOSP|20260102030405||ADT^A02^ADT_A02|MSG0002|P|2.5.1\rEVN|A02|20260102030000\rPV1|1|I|CCU^3^A\r"
	m, _ := hl7.Parse([]byte(in), hl7.Limits{})
	_, rej := hl7.ParseADT(m, hl7.ADTOptions{})
	show(hl7.Ack(m, rej.Ack, rej.Problems, hl7.AckOptions{SendingFacility: "ICU-GW", ControlID: "AK7Q3ZJX21", Now: time.Date(2026, 1, 2, 3, 4, 6, 0, time.UTC)}))
	// Output:
	// MSH|^~\&|VIGIL|ICU-GW|EPIC|GENHOSP|20260102030406+0000||ACK^A02^ACK|AK7Q3ZJX21|P|2.5.1
	// MSA|AE|MSG0002|PID segment is required
	// ERR||PID^1|100^Segment sequence error^HL70357|E|missing_pid^^99VGL|||PID segment is required
}
